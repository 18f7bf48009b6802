//! Reading and writing NumPy `.npy` and `.npz` files.
//!
//! This is how tensors get in and out of stitch from the Python world (weights,
//! test fixtures, reference outputs). The `.npy` format is a small text header
//! (a Python dict literal) followed by the raw elements; `.npz` is a zip
//! archive of `NAME.npy` entries.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0; little- and big-endian
//! data (big-endian is byte-swapped on read); C and Fortran order (Fortran data
//! is transposed into stitch's row-major layout); scalars (`shape: ()`) and
//! zero-size arrays; and `.npz` entries that are stored or deflated (what
//! `np.savez` and `np.savez_compressed` write). Writing produces version 1.0
//! (2.0 when the header would not fit 1.0's 16-bit length), little-endian, C
//! order, with the header padded so the data starts on a 64-byte boundary, the
//! same as NumPy; `.npz` entries are written uncompressed, like `np.savez`.
//!
//! Supported dtypes and their descrs: `f4 f8 f2 i1 u1 i2 u2 i4 u4 i8 u8 b1`.
//! **bf16 has no NumPy dtype**, so [`write_npy`] of a bf16 tensor is an error;
//! cast it to f32 first, e.g.
//! `Tensor::from_f64(DType::F32, &t.to_f64_vec(), t.shape())` (exact: every
//! bf16 value is an f32 value).
//!
//! Every file is treated as untrusted: every offset and length is checked
//! before use, sizes use overflow-checked arithmetic, and a malformed file is
//! an [`Error::Format`] naming the byte offset of the problem, never a panic.
//!
//! ```
//! use stitch_core::{npy, Tensor};
//! let t = Tensor::from_vec(vec![1.5f32, -2.0, 3.25, 4.0, 5.0, 6.5], &[2, 3])?;
//! let bytes = npy::write_npy(&t)?;
//! assert!(bytes.starts_with(b"\x93NUMPY"));
//! let back = npy::read_npy(&bytes, "example.npy")?;
//! assert_eq!(back.shape(), &[2, 3]);
//! assert_eq!(back.to_vec::<f32>()?, t.to_vec::<f32>()?);
//! # Ok::<(), stitch_core::Error>(())
//! ```

use std::io::{Cursor, Read, Write};
use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Buffer, Tensor};

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy pads the header so the data starts at a multiple of this.
const ALIGN: usize = 64;
/// Nesting limit for the header's Python literal: a real header nests two
/// deep; a hostile one must not overflow the stack.
const MAX_DEPTH: usize = 16;

const HOST_BIG_ENDIAN: bool = cfg!(target_endian = "big");

/// Reads a `.npy` file from memory. `what` names the source in error messages
/// (e.g. the file name).
///
/// ```
/// use stitch_core::{npy, DType, Tensor};
/// // A big-endian Fortran-order 2x2 i16 array, written by hand.
/// let header = "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 2), }\n";
/// let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
/// bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
/// bytes.extend_from_slice(header.as_bytes());
/// for v in [1i16, 3, 2, 4] { bytes.extend_from_slice(&v.to_be_bytes()); } // column-major
/// let t = npy::read_npy(&bytes, "hand-made")?;
/// assert_eq!(t.dtype(), DType::I16);
/// assert_eq!(t.to_vec::<i16>()?, vec![1, 2, 3, 4]);
///
/// // Malformed input is an error, never a panic.
/// assert!(npy::read_npy(&bytes[..bytes.len() - 1], "truncated").is_err());
/// assert!(npy::read_npy(b"PK\x03\x04", "not npy").is_err());
/// # Ok::<(), stitch_core::Error>(())
/// ```
pub fn read_npy(bytes: &[u8], what: &str) -> Result<Tensor> {
    let header = parse_header(bytes, what)?;
    let es = header.dtype.size_in_bytes();
    let data = &bytes[header.data_start..];
    if data.len() != header.nbytes {
        let (offset, msg) = if data.len() < header.nbytes {
            (
                bytes.len(),
                format!(
                    "data is {} bytes but shape {:?} of {} needs {} bytes (file truncated?)",
                    data.len(),
                    header.shape,
                    header.dtype,
                    header.nbytes
                ),
            )
        } else {
            (
                header.data_start + header.nbytes,
                format!(
                    "{} unexpected bytes after the {} bytes of data for shape {:?} of {}",
                    data.len() - header.nbytes,
                    header.nbytes,
                    header.shape,
                    header.dtype
                ),
            )
        };
        return Err(Error::format(what, offset as u64, msg));
    }
    let mut buffer = Buffer::from_bytes(data);
    if header.swap_bytes && es > 1 {
        for element in buffer.as_bytes_mut().chunks_exact_mut(es) {
            element.reverse();
        }
    }
    if header.dtype == DType::Bool {
        // NumPy bools are 0/1; normalise anything else so equality on Bool8 behaves.
        for b in buffer.as_bytes_mut() {
            *b = (*b != 0) as u8;
        }
    }
    let rank = header.shape.len();
    if header.fortran_order && rank > 1 {
        // Column-major data is the row-major layout of the reversed shape;
        // reversing the axes of that view gives the array, then copy it dense.
        let reversed: Vec<usize> = header.shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..rank).rev().collect();
        Ok(Tensor::from_buffer(buffer, header.dtype, &reversed)
            .permute(&perm)?
            .contiguous())
    } else {
        Ok(Tensor::from_buffer(buffer, header.dtype, &header.shape))
    }
}

/// Encodes a tensor as a `.npy` file (version 1.0, or 2.0 for very long
/// headers; little-endian; C order). Views are written in their logical
/// row-major order.
///
/// # Errors
/// A bf16 tensor: NumPy has no bfloat16 dtype. Cast to f32 first (see the
/// module docs).
///
/// ```
/// use stitch_core::{half::bf16, npy, Tensor};
/// let t = Tensor::from_vec(vec![1u8, 2, 3], &[3])?;
/// let bytes = npy::write_npy(&t)?;
/// assert_eq!(bytes.len() % 64, 3); // header padded to 64 bytes, then 3 data bytes
/// assert!(npy::write_npy(&Tensor::scalar(bf16::ONE)).is_err());
/// # Ok::<(), stitch_core::Error>(())
/// ```
pub fn write_npy(t: &Tensor) -> Result<Vec<u8>> {
    let descr = descr_of(t.dtype())?;
    let dict = header_dict(descr, t.shape());
    // Header = dict + padding spaces + '\n', so that prefix + header is a multiple of ALIGN.
    let padded_len = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        dict.len() + 1 + (ALIGN - unpadded % ALIGN) % ALIGN
    };
    let (major, prefix) = if padded_len(10) <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let header_len = padded_len(prefix);
    let es = t.dtype().size_in_bytes();
    let n = t.numel();
    let mut out = Vec::with_capacity(prefix + header_len + n * es);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        let len = u32::try_from(header_len).map_err(|_| {
            Error::invalid(format!(
                "write_npy: shape {:?} gives a header too long for .npy",
                t.shape()
            ))
        })?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() % ALIGN, 0);

    if n > 0 {
        let c = t.contiguous();
        let start = c.offset() * es;
        let data_start = out.len();
        out.extend_from_slice(&c.buffer().as_bytes()[start..start + n * es]);
        let data = &mut out[data_start..];
        if HOST_BIG_ENDIAN && es > 1 {
            for element in data.chunks_exact_mut(es) {
                element.reverse();
            }
        }
        if t.dtype() == DType::Bool {
            for b in data {
                *b = (*b != 0) as u8;
            }
        }
    }
    Ok(out)
}

/// Reads a `.npy` file from disk.
pub fn load_npy(path: &Path) -> Result<Tensor> {
    let bytes = read_file(path)?;
    read_npy(&bytes, &path.display().to_string())
}

/// Writes a tensor to a `.npy` file (see [`write_npy`]).
pub fn save_npy(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = write_npy(t)?;
    write_file(path, &bytes)
}

/// Reads every array of an in-memory `.npz` archive, in archive order, named
/// without the `.npy` suffix. Stored and deflated entries are accepted;
/// directory entries are skipped; any other entry is an error.
///
/// ```
/// use stitch_core::{npy, Tensor};
/// let a = Tensor::from_vec(vec![1.0f64, 2.0], &[2])?;
/// let b = Tensor::scalar(7i64);
/// let bytes = npy::write_npz(&[("weights", &a), ("step", &b)])?;
/// let arrays = npy::read_npz(&bytes, "checkpoint.npz")?;
/// assert_eq!(arrays[0].0, "weights");
/// assert_eq!(arrays[0].1.to_vec::<f64>()?, vec![1.0, 2.0]);
/// assert_eq!(arrays[1].0, "step");
/// assert_eq!(arrays[1].1.to_vec::<i64>()?, vec![7]);
/// # Ok::<(), stitch_core::Error>(())
/// ```
pub fn read_npz(bytes: &[u8], what: &str) -> Result<Vec<(String, Tensor)>> {
    let zip_err = |e: zip::result::ZipError| Error::format(what, 0, format!("not a readable zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let offset = entry.header_start();
        let name = entry.name().to_string();
        if entry.is_dir() {
            continue;
        }
        let Some(stem) = name.strip_suffix(".npy") else {
            return Err(Error::format(
                what,
                offset,
                format!("entry `{name}` is not a .npy file"),
            ));
        };
        let declared = entry.size();
        // Never trust the declared size for an allocation; read at most one byte
        // past it so a lying header is detected rather than followed.
        let mut data = Vec::with_capacity(declared.min(1 << 24) as usize);
        (&mut entry)
            .take(declared.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| Error::format(what, offset, format!("cannot decompress entry `{name}`: {e}")))?;
        if data.len() as u64 != declared {
            return Err(Error::format(
                what,
                offset,
                format!(
                    "entry `{name}` holds {} bytes but its header says {declared}",
                    data.len()
                ),
            ));
        }
        let tensor = read_npy(&data, &format!("{what}, entry `{name}`"))?;
        out.push((stem.to_string(), tensor));
    }
    Ok(out)
}

/// Encodes tensors as an in-memory `.npz` archive (uncompressed entries named
/// `NAME.npy`, like `np.savez`). Names must be distinct.
pub fn write_npz(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    for (i, (name, _)) in tensors.iter().enumerate() {
        if tensors[..i].iter().any(|(other, _)| other == name) {
            return Err(Error::invalid(format!(
                "write_npz: array name `{name}` appears more than once"
            )));
        }
    }
    let zip_err = |e: zip::result::ZipError| Error::invalid(format!("write_npz: {e}"));
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, t) in tensors {
        let data = write_npy(t).map_err(|e| Error::invalid(format!("write_npz: array `{name}`: {e}")))?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(data.len() as u64 >= u32::MAX as u64);
        zw.start_file(format!("{name}.npy"), options).map_err(zip_err)?;
        zw.write_all(&data)
            .map_err(|e| Error::invalid(format!("write_npz: {e}")))?;
    }
    Ok(zw.finish().map_err(zip_err)?.into_inner())
}

/// Reads every array of a `.npz` file, in archive order (see [`read_npz`]).
pub fn load_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = read_file(path)?;
    read_npz(&bytes, &path.display().to_string())
}

/// Writes tensors to a `.npz` file (see [`write_npz`]).
pub fn save_npz(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let bytes = write_npz(tensors)?;
    write_file(path, &bytes)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

// ---------------------------------------------------------------------------
// dtype descrs

fn descr_of(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::U16 => "<u2",
        DType::I32 => "<i4",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::BF16 => {
            return Err(Error::invalid(
                "write_npy: numpy has no bfloat16 dtype, so a bf16 tensor cannot be saved as .npy; \
                 cast it to f32 first, e.g. Tensor::from_f64(DType::F32, &t.to_f64_vec(), t.shape()) \
                 (exact: every bf16 value is an f32 value)",
            ))
        }
    })
}

/// Parses a descr string: returns the dtype and whether the data must be byte-swapped.
fn parse_descr(descr: &str) -> std::result::Result<(DType, bool), String> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    let dtype = match code {
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        _ => {
            return Err(format!(
                "unsupported dtype descr '{descr}' (supported: f2 f4 f8 i1 u1 i2 u2 i4 u4 i8 u8 b1, \
                 little- or big-endian; complex, string, object, datetime, void and structured dtypes are not)"
            ))
        }
    };
    let multi_byte = dtype.size_in_bytes() > 1;
    let big = match order {
        b'<' => false,
        b'>' => true,
        b'=' => HOST_BIG_ENDIAN,
        _ if multi_byte => {
            return Err(format!(
                "descr '{descr}': byte order '|' is only valid for 1-byte types"
            ))
        }
        _ => false,
    };
    Ok((dtype, multi_byte && big != HOST_BIG_ENDIAN))
}

fn header_dict(descr: &str, shape: &[usize]) -> String {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}")
}

// ---------------------------------------------------------------------------
// header

struct Header {
    dtype: DType,
    swap_bytes: bool,
    fortran_order: bool,
    shape: Vec<usize>,
    nbytes: usize,
    data_start: usize,
}

fn parse_header(bytes: &[u8], what: &str) -> Result<Header> {
    let fmt_err = |offset: usize, msg: String| Error::format(what, offset as u64, msg);
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        let n = bytes.len().min(MAGIC.len());
        return Err(fmt_err(
            0,
            format!(
                "not a .npy file: expected magic \\x93NUMPY, found {:?}",
                String::from_utf8_lossy(&bytes[..n])
            ),
        ));
    }
    if bytes.len() < 8 {
        return Err(fmt_err(bytes.len(), "file ends inside the format version".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_size = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(fmt_err(
                6,
                format!("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"),
            ))
        }
    };
    let len_end = 8 + len_size;
    if bytes.len() < len_end {
        return Err(fmt_err(bytes.len(), "file ends inside the header length".into()));
    }
    let header_len = if len_size == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        usize::try_from(len).map_err(|_| fmt_err(8, format!("header length {len} does not fit in memory")))?
    };
    let data_start = len_end
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            fmt_err(
                8,
                format!(
                    "header length {header_len} runs past the end of the file ({} bytes after the length field)",
                    bytes.len() - len_end
                ),
            )
        })?;

    let mut parser = Parser {
        s: &bytes[len_end..data_start],
        pos: 0,
        base: len_end,
        what,
    };
    let dict = parser.parse_header_dict()?;

    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    for (key, value, at) in dict {
        let slot_taken = match key.as_str() {
            "descr" => descr.replace((value, at)).is_some(),
            "fortran_order" => fortran_order.replace((value, at)).is_some(),
            "shape" => shape.replace((value, at)).is_some(),
            _ => {
                return Err(fmt_err(
                    at,
                    format!("unexpected key '{key}' in header (expected 'descr', 'fortran_order', 'shape')"),
                ))
            }
        };
        if slot_taken {
            return Err(fmt_err(at, format!("key '{key}' appears twice in the header")));
        }
    }
    let missing = |k: &str| fmt_err(len_end, format!("header has no '{k}' key"));
    let (descr, descr_at) = descr.ok_or_else(|| missing("descr"))?;
    let (fortran, fortran_at) = fortran_order.ok_or_else(|| missing("fortran_order"))?;
    let (shape, shape_at) = shape.ok_or_else(|| missing("shape"))?;

    let (dtype, swap_bytes) = match descr {
        Value::Str(s) => parse_descr(&s).map_err(|m| fmt_err(descr_at, m))?,
        Value::List(_) => {
            return Err(fmt_err(descr_at, "structured (record) dtypes are not supported".into()));
        }
        other => {
            return Err(fmt_err(
                descr_at,
                format!("'descr' must be a string, found {}", other.kind()),
            ))
        }
    };
    let fortran_order = match fortran {
        Value::Bool(b) => b,
        other => {
            return Err(fmt_err(
                fortran_at,
                format!("'fortran_order' must be True or False, found {}", other.kind()),
            ))
        }
    };
    let shape = match shape {
        Value::Tuple(items) | Value::List(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Int(d) => usize::try_from(d)
                    .ok()
                    .filter(|&d| d <= isize::MAX as usize)
                    .ok_or_else(|| fmt_err(shape_at, format!("dimension {d} in 'shape' is negative or too large"))),
                other => Err(fmt_err(
                    shape_at,
                    format!("'shape' must hold integers, found {}", other.kind()),
                )),
            })
            .collect::<Result<Vec<usize>>>()?,
        other => {
            return Err(fmt_err(
                shape_at,
                format!("'shape' must be a tuple, found {}", other.kind()),
            ))
        }
    };

    // The element count and byte size must be representable, and so must the
    // strides of the (possibly zero-size) layout, which treat 0 as 1.
    let too_large = || fmt_err(shape_at, format!("shape {shape:?} of {dtype} is too large"));
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_large)?;
    let nbytes = numel
        .checked_mul(dtype.size_in_bytes())
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(too_large)?;
    shape
        .iter()
        .try_fold(1usize, |acc, &d| {
            acc.checked_mul(d.max(1)).filter(|&n| n <= isize::MAX as usize)
        })
        .ok_or_else(too_large)?;

    Ok(Header {
        dtype,
        swap_bytes,
        fortran_order,
        shape,
        nbytes,
        data_start,
    })
}

/// The subset of Python literals a `.npy` header may contain.
enum Value {
    Str(String),
    Bool(bool),
    None,
    Int(i128),
    Tuple(Vec<Value>),
    List(Vec<Value>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a bool",
            Value::None => "None",
            Value::Int(_) => "an integer",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
        }
    }
}

/// A hand-written parser for the header's Python dict literal. Offsets in
/// errors are absolute file offsets (`base` + position in the header).
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    base: usize,
    what: &'a str,
}

impl Parser<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(
            self.what,
            (self.base + self.pos) as u64,
            format!("bad header: {}", msg.into()),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected '{}', found {}", c as char, self.describe_here())))
        }
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            None => "the end of the header".to_string(),
            Some(c) if c.is_ascii_graphic() => format!("'{}'", c as char),
            Some(c) => format!("byte 0x{c:02x}"),
        }
    }

    /// The whole header: one dict, then only whitespace. Returns (key, value, offset of value).
    fn parse_header_dict(&mut self) -> Result<Vec<(String, Value, usize)>> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key_at = self.pos;
            let key = match self.parse_value(1)? {
                Value::Str(s) => s,
                other => {
                    self.pos = key_at;
                    return Err(self.err(format!("dict keys must be strings, found {}", other.kind())));
                }
            };
            self.expect(b':')?;
            self.skip_ws();
            let value_at = self.base + self.pos;
            let value = self.parse_value(1)?;
            entries.push((key, value, value_at));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err(format!("expected ',' or '}}', found {}", self.describe_here()))),
            }
        }
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(self.err(format!("unexpected {} after the header dict", self.describe_here())));
        }
        Ok(entries)
    }

    fn parse_value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.err("literal nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.parse_str(q),
            Some(b'(') => {
                self.pos += 1;
                let (items, trailing_comma) = self.parse_items(b')', depth)?;
                // `(x)` is just x in Python; only `(x,)` is a one-tuple.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().unwrap_or(Value::None))
                } else {
                    Ok(Value::Tuple(items))
                }
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(Value::List(self.parse_items(b']', depth)?.0))
            }
            Some(b'{') => Err(self.err("nested dicts are not supported")),
            Some(b'-' | b'+' | b'0'..=b'9') => self.parse_int(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    other => {
                        let name = String::from_utf8_lossy(other).into_owned();
                        self.pos = start;
                        Err(self.err(format!("unexpected name `{name}`")))
                    }
                }
            }
            _ => Err(self.err(format!("expected a value, found {}", self.describe_here()))),
        }
    }

    /// Comma-separated values up to `close` (already past the opener). Returns
    /// the items and whether a trailing comma was present.
    fn parse_items(&mut self, close: u8, depth: usize) -> Result<(Vec<Value>, bool)> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, trailing_comma));
            }
            items.push(self.parse_value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(c) if c == close => {
                    self.pos += 1;
                    return Ok((items, false));
                }
                _ => {
                    return Err(self.err(format!(
                        "expected ',' or '{}', found {}",
                        close as char,
                        self.describe_here()
                    )))
                }
            }
        }
    }

    fn parse_str(&mut self, quote: u8) -> Result<Value> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\n') => {
                    self.pos = start;
                    return Err(self.err("unterminated string"));
                }
                Some(b'\\') => {
                    // Headers never need escapes; keep the escaped byte literally.
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => out.push(c),
                        None => {
                            self.pos = start;
                            return Err(self.err("unterminated string"));
                        }
                    }
                    self.pos += 1;
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn parse_int(&mut self) -> Result<Value> {
        let start = self.pos;
        let negative = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b'+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let digits_start = self.pos;
        let mut v: i128 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = match v.checked_mul(10).and_then(|v| v.checked_add((c - b'0') as i128)) {
                Some(v) => v,
                None => {
                    self.pos = start;
                    return Err(self.err("integer literal too large"));
                }
            };
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err(self.err(format!("expected digits, found {}", self.describe_here())));
        }
        // Python 2 era files write longs as `3L`.
        if matches!(self.peek(), Some(b'L' | b'l')) {
            self.pos += 1;
        }
        Ok(Value::Int(if negative { -v } else { v }))
    }
}
