//! GGUF reader (versions 2 and 3).
//!
//! The file is memory-mapped. Metadata is parsed eagerly (every value type,
//! nested arrays included); tensors are described by [`TensorInfo`] and read
//! lazily with [`Gguf::tensor`]: F32/F16/BF16 as stitch tensors over the
//! mapping (zero-copy when aligned), block-quantized types as packed `u8`
//! `[rows, row_bytes]` tensors in their [`QuantFormat`] — never expanded to
//! f32 at load. Every offset and length is checked against the file; errors
//! name the field and its byte offset.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use stitch_core::{Buffer, DType, Error, QuantFormat, Result, Tensor};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f32
    F32(f32),
    /// f64
    F64(f64),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(b) => Some(b as u64),
            _ => None,
        }
    }
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v as f64),
            Value::I16(v) => Some(v as f64),
            Value::I32(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// A tensor's storage type in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// A block-quantized format.
    Quant(QuantFormat),
}

impl GgmlType {
    fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Quant(QuantFormat::Q4_0),
            3 => GgmlType::Quant(QuantFormat::Q4_1),
            6 => GgmlType::Quant(QuantFormat::Q5_0),
            7 => GgmlType::Quant(QuantFormat::Q5_1),
            8 => GgmlType::Quant(QuantFormat::Q8_0),
            12 => GgmlType::Quant(QuantFormat::Q4_K),
            13 => GgmlType::Quant(QuantFormat::Q5_K),
            14 => GgmlType::Quant(QuantFormat::Q6_K),
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    /// The name llama.cpp uses.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Quant(q) => q.name(),
        }
    }
    /// Bytes of a row of `elems` elements.
    fn row_bytes(self, elems: u64) -> Option<u64> {
        match self {
            GgmlType::F32 => elems.checked_mul(4),
            GgmlType::F16 | GgmlType::BF16 => elems.checked_mul(2),
            GgmlType::Quant(q) => {
                let be = q.block_elems() as u64;
                elems.is_multiple_of(be).then(|| elems / be * q.block_bytes() as u64)
            }
        }
    }
}

/// Where and how a tensor is stored.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Logical shape, row-major (GGUF stores dims innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub bytes: usize,
}

/// A tensor read from a GGUF file.
#[derive(Debug, Clone)]
pub enum GgufTensor {
    /// F32, F16 or BF16 data as a stitch tensor of the logical shape.
    Dense(Tensor),
    /// Block-quantized data, packed: a `u8` tensor `[rows, row_bytes]`, where
    /// rows is the product of all but the last logical dim.
    Quant {
        /// The packed bytes.
        packed: Tensor,
        /// Their format.
        format: QuantFormat,
        /// The logical shape.
        shape: Vec<usize>,
    },
}

/// A memory-mapped GGUF file.
pub struct Gguf {
    map: Arc<memmap2::Mmap>,
    path: String,
    /// Format version (2 or 3).
    pub version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Upper bound on counts read from a header, to refuse absurd allocations
/// before the file is checked to hold them.
const MAX_COUNT: u64 = 1 << 28;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.what, self.pos as u64, msg)
    }
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.err(format!(
                    "file ends inside {field} ({n} bytes wanted, {} left)",
                    self.data.len() - self.pos
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, f: &str) -> Result<u8> {
        Ok(self.take(1, f)?[0])
    }
    fn u16(&mut self, f: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, f)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, f: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, f)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, f: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, f)?.try_into().expect("8 bytes")))
    }
    fn count(&mut self, f: &str) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(f)?;
        if n > MAX_COUNT {
            return Err(Error::format(
                self.what,
                at as u64,
                format!("{f} {n} is implausibly large"),
            ));
        }
        Ok(n)
    }
    fn string(&mut self, f: &str) -> Result<String> {
        let at = self.pos;
        let n = self.count(f)? as usize;
        let b = self.take(n, f)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::format(self.what, at as u64, format!("{f} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, f: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(f)?),
            1 => Value::I8(self.u8(f)? as i8),
            2 => Value::U16(self.u16(f)?),
            3 => Value::I16(self.u16(f)? as i16),
            4 => Value::U32(self.u32(f)?),
            5 => Value::I32(self.u32(f)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(f)?)),
            7 => {
                let at = self.pos;
                match self.u8(f)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(Error::format(self.what, at as u64, format!("{f}: bool byte {b}"))),
                }
            }
            8 => Value::String(self.string(f)?),
            9 => {
                if depth > 8 {
                    return Err(self.err(format!("{f}: arrays nested too deeply")));
                }
                let elem_ty = self.u32(f)?;
                let n = self.count(f)?;
                // Each element takes at least one byte: refuse counts the file cannot hold.
                if n as usize > self.data.len() - self.pos {
                    return Err(self.err(format!("{f}: array of {n} elements does not fit in the file")));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, f, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(f)?),
            11 => Value::I64(self.u64(f)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(f)?)),
            other => return Err(self.err(format!("{f}: unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    /// Opens and parses `path` (memory-mapped).
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; like every reader of model files we
        // assume the file is not truncated or rewritten while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Gguf::parse(Arc::new(map), path.display().to_string())
    }

    /// Parses GGUF bytes already in memory (for tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::Io {
            path: "<memory>".into(),
            source: e,
        })?;
        map[..bytes.len()].copy_from_slice(&bytes);
        let map = map.make_read_only().map_err(|e| Error::Io {
            path: "<memory>".into(),
            source: e,
        })?;
        let g = Gguf::parse_len(Arc::new(map), "<memory>".into(), bytes.len())?;
        Ok(g)
    }

    fn parse(map: Arc<memmap2::Mmap>, path: String) -> Result<Gguf> {
        let len = map.len();
        Gguf::parse_len(map, path, len)
    }

    fn parse_len(map: Arc<memmap2::Mmap>, path: String, len: usize) -> Result<Gguf> {
        let what = format!("GGUF file {path}");
        let mut r = Reader {
            data: &map[..len],
            pos: 0,
            what: &what,
        };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(Error::format(&what, 0, format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                &what,
                4,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(Error::format(
                        &what,
                        r.pos as u64,
                        format!("general.alignment {v:?} is not a power of two"),
                    ))
                }
            },
        };
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        for _ in 0..n_tensors {
            let at = r.pos as u64;
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor rank")?;
            if n_dims == 0 || n_dims > 8 {
                return Err(Error::format(&what, at, format!("tensor `{name}` has rank {n_dims}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dim")?);
            }
            let ty_at = r.pos as u64;
            let ty_id = r.u32("tensor type")?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                Error::format(
                    &what,
                    ty_at,
                    format!("tensor `{name}` has ggml type {ty_id}, which stitch does not support (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K are)"),
                )
            })?;
            let offset = r.u64("tensor offset")?;
            // Every partial product of the dims must fit (tensor code multiplies
            // them in any order; a zero dim must not hide an overflow).
            let fits = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d.max(1)))
                .is_some_and(|n| n <= isize::MAX as u64);
            let rows = dims[1..]
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|_| fits);
            let bytes = rows
                .and_then(|rows| ty.row_bytes(dims[0]).and_then(|rb| rb.checked_mul(rows)))
                .ok_or_else(|| {
                    Error::format(
                        &what,
                        at,
                        format!(
                            "tensor `{name}` dims {dims:?} do not fit type {} (rows must hold whole blocks)",
                            ty.name()
                        ),
                    )
                })?;
            let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            infos.push((name, shape, ty, offset, bytes, at));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, shape, ty, offset, bytes, at) in infos {
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= len as u64 => tensors.push(TensorInfo {
                    name,
                    shape,
                    ty,
                    offset: s as usize,
                    bytes: bytes as usize,
                }),
                _ => {
                    return Err(Error::format(
                        &what,
                        at,
                        format!(
                            "tensor `{name}` data (offset {offset} + {bytes} bytes after the data section at {data_start}) lies outside the {len}-byte file"
                        ),
                    ))
                }
            }
        }
        Ok(Gguf {
            map,
            path,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }
    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    /// A required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::invalid(format!("{}: metadata key `{key}` is missing", self.path)))
    }
    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| Error::invalid(format!("{}: metadata `{key}` is not a string", self.path)))
    }
    /// A required non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.require(key)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::invalid(format!("{}: metadata `{key}` is not a non-negative integer", self.path)))
    }
    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| Error::invalid(format!("{}: metadata `{key}` is not a number", self.path)))
    }
    /// Tensor descriptions, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// One tensor's description.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads a tensor (zero-copy over the mapping where its offset is aligned).
    pub fn tensor(&self, name: &str) -> Result<GgufTensor> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::invalid(format!("{}: tensor `{name}` is not in the file", self.path)))?;
        let buffer = Buffer::from_external(self.map.clone(), info.offset, info.bytes)?;
        match info.ty {
            GgmlType::F32 => Ok(GgufTensor::Dense(Tensor::from_buffer(buffer, DType::F32, &info.shape))),
            GgmlType::F16 => Ok(GgufTensor::Dense(Tensor::from_buffer(buffer, DType::F16, &info.shape))),
            GgmlType::BF16 => Ok(GgufTensor::Dense(Tensor::from_buffer(buffer, DType::BF16, &info.shape))),
            GgmlType::Quant(format) => {
                let k = *info.shape.last().expect("rank >= 1");
                let rows: usize = info.shape[..info.shape.len() - 1].iter().product();
                let row_bytes = format.row_bytes(k)?;
                Ok(GgufTensor::Quant {
                    packed: Tensor::from_buffer(buffer, DType::U8, &[rows, row_bytes]),
                    format,
                    shape: info.shape.clone(),
                })
            }
        }
    }
}

/// Writes GGUF v3 files (for tests: tiny random-weight models, fuzz seeds).
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }
    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.into(), v));
        self
    }
    /// Adds an f32 tensor of logical `shape` (row-major).
    pub fn f32_tensor(&mut self, name: &str, shape: &[usize], data: &[f32]) -> &mut Self {
        self.tensors
            .push((name.into(), shape.to_vec(), 0, bytemuck::cast_slice(data).to_vec()));
        self
    }
    /// Adds a packed quantized tensor of logical `shape` (bytes in `format`).
    pub fn quant_tensor(&mut self, name: &str, shape: &[usize], format: QuantFormat, bytes: Vec<u8>) -> &mut Self {
        let id = match format {
            QuantFormat::Q4_0 => 2,
            QuantFormat::Q4_1 => 3,
            QuantFormat::Q5_0 => 6,
            QuantFormat::Q5_1 => 7,
            QuantFormat::Q8_0 => 8,
            QuantFormat::Q4_K => 12,
            QuantFormat::Q5_K => 13,
            QuantFormat::Q6_K => 14,
        };
        self.tensors.push((name.into(), shape.to_vec(), id, bytes));
        self
    }
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn ty(v: &Value) -> u32 {
            match v {
                Value::U8(_) => 0,
                Value::I8(_) => 1,
                Value::U16(_) => 2,
                Value::I16(_) => 3,
                Value::U32(_) => 4,
                Value::I32(_) => 5,
                Value::F32(_) => 6,
                Value::Bool(_) => 7,
                Value::String(_) => 8,
                Value::Array(_) => 9,
                Value::U64(_) => 10,
                Value::I64(_) => 11,
                Value::F64(_) => 12,
            }
        }
        fn value(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U8(x) => out.push(*x),
                Value::I8(x) => out.push(*x as u8),
                Value::U16(x) => out.extend(x.to_le_bytes()),
                Value::I16(x) => out.extend(x.to_le_bytes()),
                Value::U32(x) => out.extend(x.to_le_bytes()),
                Value::I32(x) => out.extend(x.to_le_bytes()),
                Value::F32(x) => out.extend(x.to_le_bytes()),
                Value::Bool(x) => out.push(*x as u8),
                Value::String(s) => string(out, s),
                Value::Array(a) => {
                    out.extend(a.first().map_or(4, ty).to_le_bytes());
                    out.extend((a.len() as u64).to_le_bytes());
                    for e in a {
                        value(out, e);
                    }
                }
                Value::U64(x) => out.extend(x.to_le_bytes()),
                Value::I64(x) => out.extend(x.to_le_bytes()),
                Value::F64(x) => out.extend(x.to_le_bytes()),
            }
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            string(&mut out, k);
            out.extend(ty(v).to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, shape, id, bytes) in &self.tensors {
            string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + bytes.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        let base = out.len();
        for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn dims_whose_product_overflows_are_an_error_not_a_panic() {
        // Found by the fuzzer: a zero dim hid an overflowing product of the others.
        let bytes = include_bytes!("../fuzz/seeds/gguf/overflowing-dims.gguf").to_vec();
        if let Ok(g) = Gguf::from_bytes(bytes) {
            for t in g.tensors().to_vec() {
                let _ = g.tensor(&t.name);
            }
        }
    }
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("llama".into()))
            .meta("a.u8", Value::U8(7))
            .meta("a.i8", Value::I8(-7))
            .meta("a.u16", Value::U16(700))
            .meta("a.i16", Value::I16(-700))
            .meta("a.u32", Value::U32(70000))
            .meta("a.i32", Value::I32(-70000))
            .meta("a.u64", Value::U64(1 << 40))
            .meta("a.i64", Value::I64(-(1 << 40)))
            .meta("a.f32", Value::F32(1.5))
            .meta("a.f64", Value::F64(-2.25))
            .meta("a.bool", Value::Bool(true))
            .meta(
                "a.arr",
                Value::Array(vec![Value::String("x".into()), Value::String("yz".into())]),
            )
            .meta(
                "a.nested",
                Value::Array(vec![Value::Array(vec![Value::I32(1), Value::I32(2)])]),
            );
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        w.f32_tensor("t.f32", &[2, 3], &data);
        let q: Vec<u8> = (0..2 * 20).map(|i| (i * 37 % 251) as u8).collect();
        w.quant_tensor("t.q41", &[2, 32], QuantFormat::Q4_1, q);
        w.to_bytes()
    }

    #[test]
    fn round_trips_every_value_type_and_tensors() {
        let g = Gguf::from_bytes(sample()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get("a.i8"), Some(&Value::I8(-7)));
        assert_eq!(g.get("a.i16"), Some(&Value::I16(-700)));
        assert_eq!(g.get("a.i32"), Some(&Value::I32(-70000)));
        assert_eq!(g.get("a.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(g.get_usize("a.u64").unwrap(), 1 << 40);
        assert_eq!(g.get_usize("a.u16").unwrap(), 700);
        assert_eq!(g.get_f64("a.f32").unwrap(), 1.5);
        assert_eq!(g.get_f64("a.f64").unwrap(), -2.25);
        assert_eq!(g.get("a.bool").and_then(Value::as_bool), Some(true));
        assert_eq!(g.get("a.arr").and_then(Value::as_array).map(|a| a.len()), Some(2));
        assert_eq!(
            g.get("a.nested"),
            Some(&Value::Array(vec![Value::Array(vec![Value::I32(1), Value::I32(2)])]))
        );
        match g.tensor("t.f32").unwrap() {
            GgufTensor::Dense(t) => {
                assert_eq!(t.shape(), &[2, 3]);
                assert_eq!(t.to_vec::<f32>().unwrap(), vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
            }
            other => panic!("{other:?}"),
        }
        match g.tensor("t.q41").unwrap() {
            GgufTensor::Quant { packed, format, shape } => {
                assert_eq!(format, QuantFormat::Q4_1);
                assert_eq!(shape, vec![2, 32]);
                assert_eq!(packed.shape(), &[2, 20]);
                assert_eq!(packed.to_vec::<u8>().unwrap()[..3], [0, 37, 74]);
            }
            other => panic!("{other:?}"),
        }
        assert!(g.tensor("missing").unwrap_err().to_string().contains("missing"));
        assert!(g.get_str("a.u8").unwrap_err().to_string().contains("a.u8"));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(
                Gguf::from_bytes(bytes[..n].to_vec()).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn bad_magic_version_and_tensor_type_are_named() {
        let mut b = sample();
        b[0] = b'X';
        assert!(Gguf::from_bytes(b).unwrap_err().to_string().contains("not a GGUF"));
        let mut b = sample();
        b[4] = 9;
        assert!(Gguf::from_bytes(b).unwrap_err().to_string().contains("version 9"));
        // Unknown tensor type: find the f32 tensor's type field (after its name and dims).
        let b = sample();
        let pos = b.windows(5).position(|w| w == b"t.f32").unwrap() + 5 + 4 + 16;
        let mut b2 = b.clone();
        b2[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
        let e = Gguf::from_bytes(b2).unwrap_err().to_string();
        assert!(e.contains("ggml type 99") && e.contains("t.f32"), "{e}");
        // An offset past the end of the file.
        let mut b3 = b;
        b3[pos + 4..pos + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = Gguf::from_bytes(b3).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
    }
}
