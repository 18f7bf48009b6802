//! Host tensors: a shared byte buffer plus a strided layout.
//!
//! A [`Tensor`] is `(Arc<Buffer>, dtype, shape, strides, offset)`. Reshape (when
//! the strides allow), permute, slice with step, broadcast and `as_strided` are
//! views: they share the buffer and copy nothing. Writing goes through
//! copy-on-write ([`Tensor::make_contiguous_mut`], [`Tensor::buffer_mut`]), so
//! a view never observes a later write to the tensor it came from.
//!
//! This type is host memory only; device buffers belong to their backend.

use std::sync::Arc;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Inline storage for a tensor's dims: views and clones of tensors up to rank 6
/// allocate nothing.
pub type Dims = smallvec::SmallVec<[usize; 6]>;
/// Inline storage for a tensor's strides (see [`Dims`]).
pub type Strides = smallvec::SmallVec<[isize; 6]>;

/// Row-major strides (in elements) of a contiguous array of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Strides {
    let mut strides = Strides::from_elem(0, shape.len());
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1) as isize;
    }
    strides
}

/// Bytes owned elsewhere (a memory-mapped file, say) that a [`Buffer`] can borrow
/// without copying. Implemented for anything that derefs to bytes and is shareable.
pub trait ExternalBytes: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];
}

impl<T: AsRef<[u8]> + Send + Sync> ExternalBytes for T {
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }
}

/// Memory owned by a device backend (a GPU's, say). Host code cannot read it:
/// the executor moves tensors between devices with the backends' `upload` and
/// `download` (the copy steps of a plan), and device kernels reach their
/// backend's concrete type through [`DeviceMemory::as_any`].
pub trait DeviceMemory: Send + Sync + std::fmt::Debug + std::any::Any {
    /// The device, e.g. `cuda:0`.
    fn device(&self) -> String;
    /// Size in bytes.
    fn len(&self) -> usize;
    /// True when the memory holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// For downcasting to the backend's own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

#[derive(Clone)]
enum Storage {
    /// Host memory owned by the buffer, 8-byte aligned.
    Owned(Vec<u64>),
    /// A read-only window `[offset, offset + len)` of external bytes (e.g. a
    /// memory-mapped weight file). Writing first copies it into `Owned`.
    External {
        bytes: Arc<dyn ExternalBytes>,
        offset: usize,
    },
    /// Device memory; not addressable from the host.
    Device(Arc<dyn DeviceMemory>),
}

/// An 8-byte aligned, reference-counted byte buffer in host memory, either owned or
/// borrowed zero-copy from external bytes such as a memory-mapped file.
#[derive(Clone)]
pub struct Buffer {
    storage: Storage,
    len: usize,
}

impl Buffer {
    /// A zero-filled buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Buffer {
        Buffer {
            storage: Storage::Owned(vec![0u64; len.div_ceil(8)]),
            len,
        }
    }
    /// A buffer holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Buffer {
        let mut b = Buffer::zeroed(bytes.len());
        b.as_bytes_mut().copy_from_slice(bytes);
        b
    }
    /// A zero-copy window `[offset, offset + len)` of `bytes` (for example a memory
    /// map). The window must lie inside the bytes; when its start is not 8-byte
    /// aligned the bytes are copied instead, so typed views stay aligned.
    pub fn from_external(bytes: Arc<dyn ExternalBytes>, offset: usize, len: usize) -> Result<Buffer> {
        let total = bytes.bytes().len();
        let end = offset.checked_add(len).filter(|&e| e <= total).ok_or_else(|| {
            Error::Invalid(format!(
                "external buffer window {offset}..{offset}+{len} lies outside its {total} bytes"
            ))
        })?;
        let start = bytes.bytes()[offset..end].as_ptr();
        if !(start as usize).is_multiple_of(8) {
            return Ok(Buffer::from_bytes(&bytes.bytes()[offset..end]));
        }
        Ok(Buffer {
            storage: Storage::External { bytes, offset },
            len,
        })
    }
    /// True when the bytes are borrowed from external memory (not yet copied).
    pub fn is_external(&self) -> bool {
        matches!(self.storage, Storage::External { .. })
    }
    /// A buffer standing for device memory (see [`DeviceMemory`]).
    pub fn from_device(mem: Arc<dyn DeviceMemory>) -> Buffer {
        let len = mem.len();
        Buffer {
            storage: Storage::Device(mem),
            len,
        }
    }
    /// The device memory behind this buffer, if it lives on a device.
    pub fn device_memory(&self) -> Option<&Arc<dyn DeviceMemory>> {
        match &self.storage {
            Storage::Device(m) => Some(m),
            _ => None,
        }
    }
    fn host_only(&self) -> ! {
        let dev = self.device_memory().map(|m| m.device()).unwrap_or_default();
        panic!("this tensor lives on {dev}; download it to the host before reading it there")
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(words) => &bytemuck::cast_slice(words)[..self.len],
            Storage::External { bytes, offset } => &bytes.bytes()[*offset..*offset + self.len],
            Storage::Device(_) => self.host_only(),
        }
    }
    /// The bytes, mutably (external bytes are copied into owned memory first).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        if let Storage::External { .. } = self.storage {
            let mut words = vec![0u64; self.len.div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..self.len].copy_from_slice(self.as_bytes());
            self.storage = Storage::Owned(words);
        }
        if let Storage::Device(_) = self.storage {
            self.host_only();
        }
        match &mut self.storage {
            Storage::Owned(words) => &mut bytemuck::cast_slice_mut(words)[..self.len],
            Storage::External { .. } | Storage::Device(_) => unreachable!("converted or rejected above"),
        }
    }
    /// The buffer viewed as elements of `T` (the byte length must be a multiple of its size).
    pub fn as_slice<T: Element>(&self) -> &[T] {
        bytemuck::cast_slice(self.as_bytes())
    }
    /// The buffer viewed as mutable elements of `T`.
    pub fn as_slice_mut<T: Element>(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(self.as_bytes_mut())
    }
    /// Address of the first byte (for identity checks in tests and the profiler;
    /// for device memory, the address of its handle).
    pub fn as_ptr(&self) -> *const u8 {
        match &self.storage {
            Storage::Device(m) => Arc::as_ptr(m) as *const u8,
            _ => self.as_bytes().as_ptr(),
        }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.len)
    }
}

/// Buffers recycled across runs of a plan, so that steady-state runs allocate
/// nothing: while a pool is active on a thread ([`BufferPool::scope`]),
/// [`Tensor::zeros`] and [`Tensor::empty`] take a free buffer of the exact size
/// from it, and the executor gives dead values back ([`BufferPool::give`]).
#[derive(Debug, Default)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Arc<Buffer>>>,
}

thread_local! {
    static ACTIVE_POOL: std::cell::Cell<*const BufferPool> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> BufferPool {
        BufferPool {
            free: std::sync::Mutex::new(Vec::with_capacity(64)),
        }
    }

    /// Runs `f` with this pool serving tensor allocations on the current thread.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const BufferPool);
        impl Drop for Restore {
            fn drop(&mut self) {
                ACTIVE_POOL.with(|p| p.set(self.0));
            }
        }
        let _restore = Restore(ACTIVE_POOL.with(|p| p.replace(self as *const BufferPool)));
        f()
    }

    /// Returns `t`'s buffer to the pool when `t` was its last holder (views and
    /// other tensors sharing it keep it alive otherwise).
    pub fn give(&self, t: Tensor) {
        if Arc::strong_count(&t.buffer) == 1
            && Arc::weak_count(&t.buffer) == 0
            && !t.buffer.is_external()
            && t.buffer.device_memory().is_none()
        {
            if let Ok(mut free) = self.free.lock() {
                // Bounded, so buffers of shapes a plan never asks for cannot pile up.
                if free.len() < 4096 {
                    free.push(t.buffer);
                }
            }
        }
    }

    /// Gives `t` to the pool active on this thread, if any (for kernels'
    /// temporaries, so that they are reused rather than freed).
    pub fn recycle(t: Tensor) {
        let p = ACTIVE_POOL.with(|p| p.get());
        if !p.is_null() {
            // SAFETY: see `take_active`.
            unsafe { &*p }.give(t);
        }
    }

    /// Buffers currently free in the pool.
    pub fn free_buffers(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }

    fn take(&self, len: usize) -> Option<Arc<Buffer>> {
        let mut free = self.free.lock().ok()?;
        let i = free.iter().position(|b| b.len() == len)?;
        Some(free.swap_remove(i))
    }

    /// A buffer of `len` bytes from the active pool, if one is active and has one.
    fn take_active(len: usize) -> Option<Arc<Buffer>> {
        let p = ACTIVE_POOL.with(|p| p.get());
        if p.is_null() {
            return None;
        }
        // SAFETY: the pointer is set only by `scope`, which keeps the pool borrowed
        // (alive) until it restores the previous value.
        unsafe { &*p }.take(len)
    }
}

/// A dense n-dimensional array in host memory, possibly a strided view.
///
/// ```
/// use stitch_core::Tensor;
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
/// let tt = t.permute(&[1, 0]).unwrap();            // a view, no copy
/// assert_eq!(tt.shape(), &[3, 2]);
/// assert_eq!(tt.to_vec::<f32>().unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// let s = t.slice(1, 0, 3, 2).unwrap();              // columns 0 and 2
/// assert_eq!(s.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 4.0, 6.0]);
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: Arc<Buffer>,
    dtype: DType,
    shape: Dims,
    /// Strides in elements; may be zero (broadcast) or negative (reversed slice).
    strides: Strides,
    /// Offset of element [0, 0, ...] in elements.
    offset: usize,
}

impl Tensor {
    /// A contiguous tensor of zeros (its buffer taken from the active
    /// [`BufferPool`] when there is one).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::alloc(dtype, shape, true)
    }

    /// A contiguous tensor whose contents are unspecified (zeros when freshly
    /// allocated, an earlier value when recycled from the active [`BufferPool`]),
    /// for kernels that overwrite every element. Its buffer is unshared.
    pub fn empty(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::alloc(dtype, shape, false)
    }

    fn alloc(dtype: DType, shape: &[usize], zero: bool) -> Tensor {
        let n: usize = shape.iter().product();
        let len = n * dtype.size_in_bytes();
        let buffer = match BufferPool::take_active(len) {
            Some(mut b) => {
                if zero {
                    if let Some(b) = Arc::get_mut(&mut b) {
                        b.as_bytes_mut().fill(0);
                    }
                }
                b
            }
            None => Arc::new(Buffer::zeroed(len)),
        };
        Tensor {
            buffer,
            dtype,
            strides: contiguous_strides(shape),
            shape: Dims::from_slice(shape),
            offset: 0,
        }
    }

    /// A contiguous tensor owning `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != data.len() {
            return Err(Error::invalid(format!(
                "Tensor::from_vec: {} elements do not fill shape {:?} ({} elements)",
                data.len(),
                shape,
                n
            )));
        }
        Ok(Tensor::from_buffer(
            Buffer::from_bytes(bytemuck::cast_slice(&data)),
            T::DTYPE,
            shape,
        ))
    }

    /// A contiguous tensor of `dtype` from f64 values, converted per [`Element::from_f64`].
    pub fn from_f64(dtype: DType, data: &[f64], shape: &[usize]) -> Result<Tensor> {
        crate::dispatch_dtype!(dtype, T => Tensor::from_vec(data.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(), shape))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor::from_buffer(Buffer::from_bytes(bytemuck::bytes_of(&v)), T::DTYPE, &[])
    }

    /// A contiguous tensor over device memory (see [`DeviceMemory`]); its
    /// length must be the elements of `shape`.
    pub fn from_device(mem: Arc<dyn DeviceMemory>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if mem.len() != n * dtype.size_in_bytes() {
            return Err(Error::invalid(format!(
                "device buffer of {} bytes does not hold {dtype} {shape:?}",
                mem.len()
            )));
        }
        Ok(Tensor {
            buffer: Arc::new(Buffer::from_device(mem)),
            dtype,
            strides: contiguous_strides(shape),
            shape: Dims::from_slice(shape),
            offset: 0,
        })
    }

    /// The device memory this tensor views, if it lives on a device.
    pub fn device_memory(&self) -> Option<&Arc<dyn DeviceMemory>> {
        self.buffer.device_memory()
    }

    /// A contiguous tensor over `buffer`, which must hold exactly the elements of `shape`.
    ///
    /// # Panics
    /// If the buffer's length does not match; this is a programming error, not user input.
    pub fn from_buffer(buffer: Buffer, dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        assert_eq!(
            buffer.len(),
            n * dtype.size_in_bytes(),
            "buffer length does not match shape"
        );
        Tensor {
            buffer: Arc::new(buffer),
            dtype,
            strides: contiguous_strides(shape),
            shape: Dims::from_slice(shape),
            offset: 0,
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The shape as a graph [`Shape`].
    pub fn graph_shape(&self) -> Shape {
        Shape::known(&self.shape)
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[isize] {
        &self.strides
    }
    /// Offset of the first element, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The underlying buffer (shared with views).
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buffer
    }

    /// True when the elements are laid out densely in row-major order (offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        // An empty tensor has no layout to violate (and contiguous_strides treats 0 as 1).
        if self.numel() == 0 {
            return true;
        }
        let mut expect = 1isize;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != expect {
                return false;
            }
            expect *= self.shape[i] as isize;
        }
        true
    }

    /// The elements as a slice, if contiguous.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_dtype::<T>()?;
        if self.numel() == 0 {
            // An empty view's offset need not lie inside the buffer (as_strided allows any).
            return Ok(&[]);
        }
        if !self.is_contiguous() {
            return Err(Error::invalid(
                "as_slice on a non-contiguous view; call contiguous() first",
            ));
        }
        Ok(&self.buffer.as_slice::<T>()[self.offset..self.offset + self.numel()])
    }

    /// The elements as a mutable slice, after making the tensor contiguous and its
    /// buffer unshared (copy-on-write).
    pub fn make_contiguous_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check_dtype::<T>()?;
        if self.numel() == 0 {
            return Ok(&mut []);
        }
        if !self.is_contiguous() || self.buffer.len() != self.numel() * self.dtype.size_in_bytes() {
            *self = self.contiguous_copy();
        }
        let n = self.numel();
        let off = self.offset;
        Ok(&mut Arc::make_mut(&mut self.buffer).as_slice_mut::<T>()[off..off + n])
    }

    /// The buffer, unshared first if another tensor holds it (copy-on-write).
    /// Layout is unchanged; writes go to `offset + Σ index·stride`.
    pub fn buffer_mut(&mut self) -> &mut Buffer {
        Arc::make_mut(&mut self.buffer)
    }

    fn check_dtype<T: Element>(&self) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(format!(
                "tensor has dtype {} but {} was requested",
                self.dtype,
                T::DTYPE
            )));
        }
        Ok(())
    }

    /// Element offsets (in elements, into the buffer) in row-major order of the view.
    pub fn element_offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(&self.shape, &self.strides, self.offset)
    }

    /// A contiguous copy (always copies).
    pub fn contiguous_copy(&self) -> Tensor {
        let es = self.dtype.size_in_bytes();
        // Every element is written below.
        let mut out = Tensor::empty(self.dtype, &self.shape);
        let src = self.buffer.as_bytes();
        let dst = Arc::get_mut(&mut out.buffer)
            .expect("a new tensor's buffer is unshared")
            .as_bytes_mut();
        for (i, off) in self.element_offsets().enumerate() {
            dst[i * es..(i + 1) * es].copy_from_slice(&src[off * es..(off + 1) * es]);
        }
        out
    }

    /// This tensor if it is already contiguous, else a contiguous copy.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            self.clone()
        } else {
            self.contiguous_copy()
        }
    }

    /// The elements in row-major order as `Vec<T>` (dtype must match).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>()?;
        let data = self.buffer.as_slice::<T>();
        Ok(self.element_offsets().map(|o| data[o]).collect())
    }

    /// The elements converted to f64, in row-major order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        crate::dispatch_dtype!(self.dtype, T => {
            let data = self.buffer.as_slice::<T>();
            self.element_offsets().map(|o| data[o].to_f64()).collect()
        })
    }

    /// Reshape. A view when the layout allows (contiguous input), else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != self.numel() {
            return Err(Error::invalid(format!(
                "cannot reshape {:?} ({} elements) to {:?} ({} elements)",
                self.shape,
                self.numel(),
                shape,
                n
            )));
        }
        let base = self.contiguous();
        Ok(Tensor {
            buffer: base.buffer,
            dtype: base.dtype,
            strides: contiguous_strides(shape),
            shape: Dims::from_slice(shape),
            offset: base.offset,
        })
    }

    /// Reorder axes: output axis i is input axis `perm[i]`. A view.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen: smallvec::SmallVec<[bool; 8]> = smallvec::smallvec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::invalid(format!(
                "permutation {perm:?} is not a permutation of 0..{r}"
            )));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            dtype: self.dtype,
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Swap two axes. A view.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Dims = (0..self.rank()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(Error::invalid(format!(
                "transpose axes {a}, {b} out of range for rank {}",
                self.rank()
            )));
        }
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Elements `start, start+step, ...` before `end` along `axis` (step may be
    /// negative: then it walks from `start` down to, not including, `end`; use
    /// `end = -1` to include index 0). `start`/`end` are clamped like Python slices
    /// with already-normalised (non-negative for positive step) bounds. A view.
    pub fn slice(&self, axis: usize, start: isize, end: isize, step: isize) -> Result<Tensor> {
        if axis >= self.rank() {
            return Err(Error::invalid(format!(
                "slice axis {axis} out of range for rank {}",
                self.rank()
            )));
        }
        if step == 0 {
            return Err(Error::invalid("slice step must not be 0"));
        }
        let dim = self.shape[axis] as isize;
        let (start, len) = if step > 0 {
            let s = start.clamp(0, dim);
            let e = end.clamp(0, dim);
            // (e - s - 1) / step + 1 is the ceiling of (e - s) / step without overflow.
            (s, if e > s { (e - s - 1) / step + 1 } else { 0 })
        } else {
            let s = start.clamp(-1, dim - 1);
            let e = end.clamp(-1, dim - 1);
            // unsigned_abs: -isize::MIN overflows.
            (
                s,
                if s > e {
                    ((s - e - 1) as usize / step.unsigned_abs() + 1) as isize
                } else {
                    0
                },
            )
        };
        let mut t = self.clone();
        t.shape[axis] = len as usize;
        if len > 0 {
            t.offset = (self.offset as isize + start * self.strides[axis]) as usize;
        }
        // A stride only matters when the axis has two or more elements.
        if len > 1 {
            t.strides[axis] = self.strides[axis].checked_mul(step).ok_or_else(|| {
                Error::invalid(format!(
                    "slice step {step} overflows stride {} of axis {axis}",
                    self.strides[axis]
                ))
            })?;
        }
        Ok(t)
    }

    /// Numpy broadcast to `shape` (right-aligned; size-1 axes get stride 0). A view.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.len() < self.rank() {
            return Err(Error::invalid(format!(
                "cannot broadcast {:?} to lower rank {:?}",
                self.shape, shape
            )));
        }
        checked_numel(shape)?;
        let lead = shape.len() - self.rank();
        let mut strides = Strides::from_elem(0, shape.len());
        for i in 0..self.rank() {
            let (d, t) = (self.shape[i], shape[lead + i]);
            strides[lead + i] = if d == t {
                self.strides[i]
            } else if d == 1 {
                0
            } else {
                return Err(Error::invalid(format!(
                    "cannot broadcast {:?} to {:?}",
                    self.shape, shape
                )));
            };
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            dtype: self.dtype,
            shape: Dims::from_slice(shape),
            strides,
            offset: self.offset,
        })
    }

    /// Insert a size-1 axis at `axis`. A view.
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(Error::invalid(format!(
                "unsqueeze axis {axis} out of range for rank {}",
                self.rank()
            )));
        }
        let mut t = self.clone();
        t.shape.insert(axis, 1);
        t.strides.insert(axis, 0);
        Ok(t)
    }

    /// A view with arbitrary shape, strides and offset (in elements) over the same buffer.
    /// Every reachable element must lie inside the buffer.
    pub fn as_strided(&self, shape: &[usize], strides: &[isize], offset: usize) -> Result<Tensor> {
        if shape.len() != strides.len() {
            return Err(Error::invalid(format!(
                "as_strided: shape {shape:?} and strides {strides:?} differ in rank"
            )));
        }
        let cap = (self.buffer.len() / self.dtype.size_in_bytes()) as i128;
        if checked_numel(shape)? > 0 {
            // In i128, one axis's span (< 2^64 * 2^63) cannot overflow; the sums are checked.
            let (mut lo, mut hi) = (offset as i128, offset as i128);
            for (&d, &s) in shape.iter().zip(strides) {
                let span = (d as i128 - 1) * s as i128;
                let sum = if span < 0 { &mut lo } else { &mut hi };
                *sum = sum
                    .checked_add(span)
                    .unwrap_or(if span < 0 { i128::MIN } else { i128::MAX });
            }
            if lo < 0 || hi >= cap {
                return Err(Error::invalid(format!(
                    "as_strided: shape {shape:?} strides {strides:?} offset {offset} reaches elements {lo}..={hi} outside the buffer of {cap} elements"
                )));
            }
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            dtype: self.dtype,
            shape: Dims::from_slice(shape),
            strides: Strides::from_slice(strides),
            offset,
        })
    }

    /// The element at a multi-index, as f64.
    pub fn get_f64(&self, index: &[usize]) -> Result<f64> {
        if index.len() != self.rank() || index.iter().zip(&self.shape).any(|(&i, &d)| i >= d) {
            return Err(Error::invalid(format!(
                "index {index:?} out of bounds for shape {:?}",
                self.shape
            )));
        }
        let off = self.offset as isize
            + index
                .iter()
                .zip(&self.strides)
                .map(|(&i, &s)| i as isize * s)
                .sum::<isize>();
        Ok(crate::dispatch_dtype!(self.dtype, T => self.buffer.as_slice::<T>()[off as usize].to_f64()))
    }
}

/// The number of elements of `shape`, or an error if it overflows `usize`.
fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("shape {shape:?} has more elements than fit in memory")))
}

/// Iterator over the buffer offsets of a strided view, in row-major order.
pub struct StridedOffsets<'a> {
    shape: &'a [usize],
    strides: &'a [isize],
    index: Dims,
    current: isize,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    /// Offsets for a layout.
    pub fn new(shape: &'a [usize], strides: &'a [isize], offset: usize) -> Self {
        StridedOffsets {
            shape,
            strides,
            index: Dims::from_elem(0, shape.len()),
            current: offset as isize,
            remaining: shape.iter().product(),
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let out = self.current as usize;
        self.remaining -= 1;
        if self.remaining > 0 {
            let mut ax = self.shape.len();
            while ax > 0 {
                ax -= 1;
                self.index[ax] += 1;
                self.current += self.strides[ax];
                if self.index[ax] < self.shape[ax] {
                    break;
                }
                self.current -= self.strides[ax] * self.shape[ax] as isize;
                self.index[ax] = 0;
            }
        }
        Some(out)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

impl Tensor {
    /// Writes `src` into this tensor's region starting at `starts` (one per axis),
    /// in place: the buffer is reused unless another tensor shares it
    /// (copy-on-write). `src` must have this tensor's dtype and rank and fit.
    pub fn write_slice(&mut self, starts: &[usize], src: &Tensor) -> Result<()> {
        if src.dtype != self.dtype || src.rank() != self.rank() || starts.len() != self.rank() {
            return Err(Error::invalid(format!(
                "write_slice: cannot write {} {:?} at {:?} into {} {:?}",
                src.dtype, src.shape, starts, self.dtype, self.shape
            )));
        }
        if let Some(ax) =
            (0..self.rank()).find(|&i| starts[i].checked_add(src.shape[i]).is_none_or(|e| e > self.shape[i]))
        {
            return Err(Error::invalid(format!(
                "write_slice: {:?} at start {:?} does not fit in {:?} (axis {ax})",
                src.shape, starts, self.shape
            )));
        }
        let es = self.dtype.size_in_bytes();
        let base = self.offset as isize
            + starts
                .iter()
                .zip(&self.strides)
                .map(|(&s, &st)| s as isize * st)
                .sum::<isize>();
        let strides = self.strides.clone();
        let src_bytes = src.buffer.as_bytes();
        let dst = Arc::make_mut(&mut self.buffer).as_bytes_mut();
        let dst_offsets = StridedOffsets::new(&src.shape, &strides, base.max(0) as usize);
        for (d, s) in dst_offsets.zip(src.element_offsets()) {
            dst[d * es..(d + 1) * es].copy_from_slice(&src_bytes[s * es..(s + 1) * es]);
        }
        Ok(())
    }
}
