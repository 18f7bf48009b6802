//! Tests of `.npy` / `.npz` reading and writing: round trips of every dtype on
//! seeded random data, hand-built files in the forms NumPy writes (Fortran
//! order, big-endian, format versions 2.0 and 3.0, Python-2 style headers),
//! and malformed input, which must be a format error and never a panic.

use std::io::Write;
use std::path::PathBuf;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::npy::{load_npy, load_npz, read_npy, read_npz, save_npy, save_npz, write_npy, write_npz};
use stitch_core::{Bool8, Buffer, DType, Error, Tensor};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random raw bits for every element (floats include NaN payloads and
/// infinities: the round trip must keep every bit); bools are 0 or 1.
fn random_tensor(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut bytes = vec![0u8; n * dtype.size_in_bytes()];
    r.fill_bytes(&mut bytes);
    if dtype == DType::Bool {
        for b in &mut bytes {
            *b &= 1;
        }
    }
    Tensor::from_buffer(Buffer::from_bytes(&bytes), dtype, shape)
}

/// The elements' bytes in row-major order (native endian).
fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let es = t.dtype().size_in_bytes();
    let src = t.buffer().as_bytes();
    t.element_offsets()
        .flat_map(|o| src[o * es..(o + 1) * es].to_vec())
        .collect()
}

/// A `.npy` file from its parts, the way NumPy lays it out.
fn npy_file(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn shape_literal(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn code_of(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f2",
        DType::F32 => "f4",
        DType::F64 => "f8",
        DType::I8 => "i1",
        DType::U8 => "u1",
        DType::Bool => "b1",
        DType::I16 => "i2",
        DType::U16 => "u2",
        DType::I32 => "i4",
        DType::U32 => "u4",
        DType::I64 => "i8",
        DType::U64 => "u8",
        DType::BF16 => unreachable!("bf16 has no numpy code"),
    }
}

fn npy_dtypes() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|&d| d != DType::BF16)
}

/// Row-major flat index → column-major (Fortran) data order.
fn to_fortran_order(row_major: &[u8], shape: &[usize], es: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n * es);
    for f in 0..n {
        // Unravel f with the first axis fastest, ravel row-major.
        let mut rem = f;
        let mut idx = vec![0; shape.len()];
        for (ax, &d) in shape.iter().enumerate() {
            idx[ax] = rem % d;
            rem /= d;
        }
        let r = idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i);
        out.extend_from_slice(&row_major[r * es..(r + 1) * es]);
    }
    out
}

fn swap_elements(bytes: &[u8], es: usize) -> Vec<u8> {
    bytes
        .chunks_exact(es)
        .flat_map(|c| c.iter().rev().copied().collect::<Vec<_>>())
        .collect()
}

fn assert_format_error(result: stitch_core::Result<Tensor>, needle: &str) -> (u64, String) {
    match result {
        Err(Error::Format { offset, message, .. }) => {
            assert!(
                message.contains(needle),
                "message `{message}` does not mention `{needle}`"
            );
            (offset, message)
        }
        Err(other) => panic!("expected a format error mentioning `{needle}`, got {other:?}"),
        Ok(t) => panic!(
            "expected a format error mentioning `{needle}`, got a tensor {:?}",
            t.shape()
        ),
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("stitch-npy-test-{}-{name}", std::process::id()))
}

const SHAPES: &[&[usize]] = &[
    &[],
    &[0],
    &[1],
    &[7],
    &[3, 4],
    &[2, 0, 3],
    &[2, 3, 4],
    &[1, 1, 5],
    &[2, 1, 3, 2],
];

#[test]
fn every_dtype_round_trips_bit_exactly_for_scalar_empty_and_nd_shapes() {
    let mut r = rng(1);
    for dtype in npy_dtypes() {
        for &shape in SHAPES {
            let t = random_tensor(&mut r, dtype, shape);
            let bytes = write_npy(&t).unwrap();
            let back = read_npy(&bytes, "round trip").unwrap();
            assert_eq!(back.dtype(), dtype);
            assert_eq!(back.shape(), shape);
            assert_eq!(raw_bytes(&back), raw_bytes(&t), "{dtype} {shape:?}");
            // NumPy's layout: 64-byte aligned data, a header naming the descr and shape.
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!(&bytes[6..8], &[1, 0]);
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(bytes.len(), 10 + header_len + t.numel() * dtype.size_in_bytes());
            let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
            assert!(header.ends_with('\n'));
            let order = if dtype.size_in_bytes() == 1 { '|' } else { '<' };
            assert!(
                header.contains(&format!("'descr': '{order}{}'", code_of(dtype))),
                "{header}"
            );
            assert!(
                header.contains(&format!("'shape': {}", shape_literal(shape))),
                "{header}"
            );
        }
    }
}

#[test]
fn header_matches_numpy_byte_for_byte() {
    // np.save(f, np.arange(6, dtype='<f4').reshape(2, 3)) with NumPy >= 1.20 writes this header.
    let t = Tensor::from_vec((0..6).map(|v| v as f32).collect(), &[2, 3]).unwrap();
    let bytes = write_npy(&t).unwrap();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    let mut expected = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    expected.extend_from_slice(dict.as_bytes());
    expected.resize(127, b' ');
    expected.push(b'\n');
    for v in 0..6 {
        expected.extend_from_slice(&(v as f32).to_le_bytes());
    }
    assert_eq!(bytes, expected);
}

#[test]
fn non_contiguous_views_are_written_in_logical_order() {
    let mut r = rng(2);
    let t = random_tensor(&mut r, DType::I32, &[4, 5, 3]);
    let views = [
        t.permute(&[2, 0, 1]).unwrap(),
        t.slice(1, 4, -1, -2).unwrap(),
        t.slice(0, 1, 4, 2).unwrap().transpose(1, 2).unwrap(),
        t.slice(2, 1, 2, 1).unwrap().broadcast_to(&[2, 4, 5, 3]).unwrap(),
    ];
    for v in &views {
        let back = read_npy(&write_npy(v).unwrap(), "view").unwrap();
        assert_eq!(back.shape(), v.shape());
        assert_eq!(back.to_vec::<i32>().unwrap(), v.to_vec::<i32>().unwrap());
    }
}

#[test]
fn bool_elements_are_written_and_read_as_zero_or_one() {
    let t = Tensor::from_vec(vec![Bool8(0), Bool8(2), Bool8(255), Bool8(1)], &[4]).unwrap();
    let bytes = write_npy(&t).unwrap();
    assert_eq!(&bytes[bytes.len() - 4..], &[0, 1, 1, 1]);
    let file = npy_file(
        1,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }\n",
        &[7, 0, 1],
    );
    let back = read_npy(&file, "bools").unwrap();
    assert_eq!(back.to_vec::<Bool8>().unwrap(), vec![Bool8(1), Bool8(0), Bool8(1)]);
}

#[test]
fn bf16_cannot_be_written_and_the_error_says_to_cast_to_f32() {
    let mut r = rng(3);
    let t = Tensor::from_f64(
        DType::BF16,
        &(0..6).map(|_| r.gen_range(-3.0..3.0)).collect::<Vec<_>>(),
        &[2, 3],
    )
    .unwrap();
    let msg = write_npy(&t).unwrap_err().to_string();
    assert!(msg.contains("bfloat16") && msg.contains("f32"), "{msg}");
    let msg = write_npz(&[("w", &t)]).unwrap_err().to_string();
    assert!(msg.contains("`w`") && msg.contains("f32"), "{msg}");
    // The suggested cast is exact and saves fine.
    let f = Tensor::from_f64(DType::F32, &t.to_f64_vec(), t.shape()).unwrap();
    let back = read_npy(&write_npy(&f).unwrap(), "cast").unwrap();
    assert_eq!(back.to_f64_vec(), t.to_f64_vec());
}

#[test]
fn fortran_order_files_are_read_as_row_major() {
    let mut r = rng(4);
    for dtype in [DType::F64, DType::I32, DType::U8, DType::F16] {
        for shape in [&[3, 4][..], &[2, 3, 4], &[5], &[], &[2, 0, 3], &[1, 4, 1, 3]] {
            let t = random_tensor(&mut r, dtype, shape);
            let es = dtype.size_in_bytes();
            let expected = raw_bytes(&t);
            let data = to_fortran_order(&expected, shape, es);
            let order = if es == 1 { "|" } else { "<" };
            let header = format!(
                "{{'descr': '{order}{}', 'fortran_order': True, 'shape': {}, }}\n",
                code_of(dtype),
                shape_literal(shape)
            );
            let back = read_npy(&npy_file(1, &header, &data), "fortran").unwrap();
            assert_eq!(back.shape(), shape);
            assert_eq!(raw_bytes(&back), expected, "{dtype} {shape:?}");
            assert!(back.is_contiguous() || back.numel() == 0);
        }
    }
}

#[test]
fn big_endian_files_of_every_dtype_are_byte_swapped_on_read() {
    let mut r = rng(5);
    for dtype in npy_dtypes() {
        for shape in [&[2, 3][..], &[], &[0, 4], &[5]] {
            let t = random_tensor(&mut r, dtype, shape);
            let es = dtype.size_in_bytes();
            let native = raw_bytes(&t);
            let big = if cfg!(target_endian = "little") {
                swap_elements(&native, es)
            } else {
                native.clone()
            };
            let header = format!(
                "{{'descr': '>{}', 'fortran_order': False, 'shape': {}}}",
                code_of(dtype),
                shape_literal(shape)
            );
            let back = read_npy(&npy_file(1, &header, &big), "big-endian").unwrap();
            assert_eq!(back.dtype(), dtype);
            assert_eq!(raw_bytes(&back), native, "{dtype} {shape:?}");
        }
    }
    // Big-endian and Fortran order together.
    let t = random_tensor(&mut r, DType::I64, &[3, 2, 4]);
    let native = raw_bytes(&t);
    let mut data = to_fortran_order(&native, &[3, 2, 4], 8);
    if cfg!(target_endian = "little") {
        data = swap_elements(&data, 8);
    }
    let header = "{'descr': '>i8', 'fortran_order': True, 'shape': (3, 2, 4), }\n";
    let back = read_npy(&npy_file(1, header, &data), "be+fortran").unwrap();
    assert_eq!(back.to_vec::<i64>().unwrap(), t.to_vec::<i64>().unwrap());
}

#[test]
fn format_versions_2_and_3_are_read() {
    let mut r = rng(6);
    let t = random_tensor(&mut r, DType::F32, &[3, 5]);
    for major in [2, 3] {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }\n";
        let back = read_npy(&npy_file(major, header, &raw_bytes(&t)), "v2/v3").unwrap();
        assert_eq!(raw_bytes(&back), raw_bytes(&t));
    }
    // Version 3.0 has a 4-byte length like 2.0: a file with a 2-byte length
    // labelled 3.0 must be rejected, not misread.
    let bad = npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
    let mut v3 = bad.clone();
    v3[6] = 3;
    assert!(read_npy(&v3, "mislabelled").is_err());
}

#[test]
fn long_headers_are_written_as_version_2_and_read_back() {
    // Rank 25000 of size-1 axes: the shape literal alone is ~75 kB, beyond 1.0's u16 length.
    let shape = vec![1usize; 25_000];
    let t = Tensor::from_vec(vec![42u16], &shape).unwrap();
    let bytes = write_npy(&t).unwrap();
    assert_eq!(&bytes[6..8], &[2, 0]);
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    assert!(header_len > u16::MAX as usize);
    assert_eq!((12 + header_len) % 64, 0);
    let back = read_npy(&bytes, "long header").unwrap();
    assert_eq!(back.shape(), &shape[..]);
    assert_eq!(back.to_vec::<u16>().unwrap(), vec![42]);
}

#[test]
fn header_dicts_are_parsed_in_any_key_order_and_spacing() {
    let data: Vec<u8> = [1i16, -2, 3, -4, 5, -6].iter().flat_map(|v| v.to_le_bytes()).collect();
    let headers = [
        "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }",
        "{'shape': (2, 3), 'descr': '<i2', 'fortran_order': False}",
        "{'fortran_order':False,'shape':(2,3,),'descr':'<i2',}",
        "{ \"descr\" : \"<i2\" , \"fortran_order\" : False , \"shape\" : ( 2 , 3 ) }   \n",
        // Python 2 era: longs with an L suffix.
        "{'descr': '<i2', 'fortran_order': False, 'shape': (2L, 3L), }      \n",
        "\t{'descr': '<i2',\n 'fortran_order': False,\n 'shape': [2, 3]}\n",
    ];
    for h in headers {
        let t = read_npy(&npy_file(1, h, &data), "header variant").unwrap_or_else(|e| panic!("{h:?}: {e}"));
        assert_eq!(t.shape(), &[2, 3], "{h:?}");
        assert_eq!(t.to_vec::<i16>().unwrap(), vec![1, -2, 3, -4, 5, -6], "{h:?}");
    }
    // Scalars: `()`; one-element tuples need the comma.
    let t = read_npy(
        &npy_file(1, "{'descr': '<i2', 'fortran_order': False, 'shape': ()}", &data[..2]),
        "scalar",
    )
    .unwrap();
    assert_eq!(t.shape(), &[] as &[usize]);
    assert_eq!(t.to_vec::<i16>().unwrap(), vec![1]);
    let t = read_npy(
        &npy_file(1, "{'descr': '<i2', 'fortran_order': False, 'shape': (6,)}", &data),
        "1-d",
    )
    .unwrap();
    assert_eq!(t.shape(), &[6]);
}

#[test]
fn malformed_headers_are_format_errors_with_useful_messages() {
    let data = [0u8; 24]; // 6 x f32 or 3 x f64
    let h = |s: &str| npy_file(1, s, &data);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x93NUMPX\x01\x00".to_vec(), "magic"),
        (b"PK\x03\x04 this is a zip".to_vec(), "magic"),
        (Vec::new(), "magic"),
        (b"\x93NUMPY".to_vec(), "version"),
        (b"\x93NUMPY\x04\x00\x10\x00".to_vec(), "version 4.0"),
        (b"\x93NUMPY\x01\x01\x10\x00".to_vec(), "version 1.1"),
        (b"\x93NUMPY\x01\x00\x10".to_vec(), "header length"),
        (b"\x93NUMPY\x02\x00\x10\x00\x00".to_vec(), "header length"),
        (b"\x93NUMPY\x01\x00\xff\xff{}".to_vec(), "runs past the end"),
        (b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}".to_vec(), "runs past the end"),
        (h("{'descr': '<f4', 'fortran_order': False}"), "no 'shape'"),
        (h("{'descr': '<f4', 'shape': (6,)}"), "no 'fortran_order'"),
        (h("{'fortran_order': False, 'shape': (6,)}"), "no 'descr'"),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'extra': 1}"),
            "unexpected key 'extra'",
        ),
        (
            h("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,)}"),
            "appears twice",
        ),
        (
            h("{'descr': '<c8', 'fortran_order': False, 'shape': (3,)}"),
            "unsupported dtype descr '<c8'",
        ),
        (
            h("{'descr': '|O', 'fortran_order': False, 'shape': (3,)}"),
            "unsupported dtype descr",
        ),
        (
            h("{'descr': '<V2', 'fortran_order': False, 'shape': (12,)}"),
            "unsupported dtype descr",
        ),
        (
            h("{'descr': '|f4', 'fortran_order': False, 'shape': (6,)}"),
            "only valid for 1-byte",
        ),
        (
            h("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,)}"),
            "structured",
        ),
        (
            h("{'descr': 4, 'fortran_order': False, 'shape': (6,)}"),
            "'descr' must be a string",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}"),
            "True or False",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': 6}"),
            "must be a tuple",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6)}"),
            "must be a tuple",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (-6,)}"),
            "negative",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': ('6',)}"),
            "must hold integers",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,)"),
            "expected ',' or '}'",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} junk"),
            "after the header dict",
        ),
        (
            h("{'descr' '<f4', 'fortran_order': False, 'shape': (6,)}"),
            "expected ':'",
        ),
        (h("{'descr': '<f4, 'fortran_order': False, 'shape': (6,)}"), "expected"),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,}"),
            "expected a value, found '}'",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6 7)}"),
            "expected ',' or ')'",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': false, 'shape': (6,)}"),
            "unexpected name `false`",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 7: 1}"),
            "keys must be strings",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': {'a': 1}}"),
            "nested dicts",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (-,)}"),
            "expected digits",
        ),
        (
            h("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x"),
            "unterminated string",
        ),
        (h("['descr', '<f4']"), "expected '{'"),
        (h(""), "expected '{'"),
        (
            h(&format!("{{'shape': {}6{}}}", "(".repeat(10_000), ")".repeat(10_000))),
            "nested too deeply",
        ),
    ];
    for (bytes, needle) in cases {
        let (offset, _) = assert_format_error(read_npy(&bytes, "case"), needle);
        assert!(
            offset as usize <= bytes.len(),
            "offset {offset} past the end for `{needle}`"
        );
    }
}

#[test]
fn error_offsets_point_at_the_problem() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'bogus': 1}";
    let file = npy_file(1, header, &[0; 24]);
    let (offset, _) = assert_format_error(read_npy(&file, "f"), "bogus");
    assert_eq!(offset as usize, 10 + header.find("1}").unwrap());
    let msg = read_npy(&file, "weights/x.npy").unwrap_err().to_string();
    assert!(msg.starts_with("weights/x.npy at byte"), "{msg}");
}

#[test]
fn data_shorter_or_longer_than_the_shape_is_an_error() {
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n";
    let mut r = rng(7);
    let mut data = vec![0u8; 48];
    r.fill_bytes(&mut data);
    assert!(read_npy(&npy_file(1, header, &data), "ok").is_ok());
    assert_format_error(read_npy(&npy_file(1, header, &data[..47]), "short"), "truncated");
    let mut long = data.clone();
    long.push(0);
    let (offset, _) = assert_format_error(read_npy(&npy_file(1, header, &long), "long"), "unexpected bytes");
    assert_eq!(offset as usize, 10 + header.len() + 48);
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let mut r = rng(8);
    let t = random_tensor(&mut r, DType::I16, &[3, 5]);
    let bytes = write_npy(&t).unwrap();
    for len in 0..bytes.len() {
        assert!(
            matches!(read_npy(&bytes[..len], "truncated"), Err(Error::Format { .. })),
            "prefix of {len} bytes was not a format error"
        );
    }
}

#[test]
fn huge_shapes_are_errors_not_allocations() {
    let cases = [
        ("(4294967296, 4294967296)", "too large"),
        ("(4611686018427387904,)", "too large"), // 2^62 f4 elements overflow the byte count
        ("(9223372036854775808,)", "too large"), // 2^63 > isize::MAX
        ("(0, 4294967296, 4294967296)", "too large"), // zero elements, but strides would overflow
        (
            "(123456789012345678901234567890123456789012,)",
            "integer literal too large",
        ),
        ("(1000000, 1000000)", "truncated"), // representable, but no such data in the file
    ];
    for (shape, needle) in cases {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        assert_format_error(read_npy(&npy_file(1, &header, &[0; 16]), "huge"), needle);
    }
    // Zero elements with large but representable dims are a fine empty array.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1000000000), }\n";
    let t = read_npy(&npy_file(1, header, &[]), "empty").unwrap();
    assert_eq!(t.shape(), &[0, 1_000_000_000]);
}

#[test]
fn randomly_corrupted_files_never_panic() {
    let mut r = rng(9);
    let t = random_tensor(&mut r, DType::F32, &[2, 3, 2]);
    let good = write_npy(&t).unwrap();
    let fortran = npy_file(1, "{'descr': '>u2', 'fortran_order': True, 'shape': (3, 2)}", &[1; 12]);
    for i in 0..3000 {
        let mut bytes = if i % 2 == 0 { good.clone() } else { fortran.clone() };
        for _ in 0..r.gen_range(1..4) {
            match r.gen_range(0..4) {
                0 => {
                    let at = r.gen_range(0..bytes.len());
                    bytes[at] = r.gen();
                }
                1 => {
                    // Corrupt the header text specifically, with header-ish bytes.
                    if bytes.len() <= 8 {
                        continue;
                    }
                    let at = r.gen_range(8..bytes.len().min(80));
                    bytes[at] = b"{}()[],:'\" 0123456789-LTrueFalse\n"[r.gen_range(0..33)];
                }
                2 => bytes.truncate(r.gen_range(0..bytes.len())),
                _ => {
                    let at = r.gen_range(0..=bytes.len());
                    bytes.insert(at, r.gen());
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        // Ok or Err are both fine; a panic fails the test.
        let _ = read_npy(&bytes, "corrupt");
        let _ = read_npz(&bytes, "corrupt");
    }
}

#[test]
fn npy_files_round_trip_on_disk_and_io_errors_name_the_path() {
    let mut r = rng(10);
    let t = random_tensor(&mut r, DType::F64, &[4, 3]);
    let path = temp_path("x.npy");
    save_npy(&path, &t).unwrap();
    let back = load_npy(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(raw_bytes(&back), raw_bytes(&t));

    let missing = temp_path("does-not-exist.npy");
    match load_npy(&missing) {
        Err(Error::Io { path, .. }) => assert!(path.contains("does-not-exist.npy")),
        other => panic!("expected an Io error, got {other:?}"),
    }
    let bad_dir = temp_path("no-such-dir").join("x.npy");
    assert!(matches!(save_npy(&bad_dir, &t), Err(Error::Io { .. })));
    assert!(matches!(load_npz(&missing), Err(Error::Io { .. })));
}

#[test]
fn npz_round_trip_keeps_names_order_dtypes_and_data() {
    let mut r = rng(11);
    let tensors = [
        ("weight", random_tensor(&mut r, DType::F32, &[3, 4])),
        ("bias", random_tensor(&mut r, DType::F16, &[4])),
        ("step", random_tensor(&mut r, DType::I64, &[])),
        ("mask", random_tensor(&mut r, DType::Bool, &[2, 2])),
        ("empty", random_tensor(&mut r, DType::U8, &[0, 3])),
        ("layer.0/attn", random_tensor(&mut r, DType::U32, &[2, 1, 3])),
    ];
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let check = |arrays: Vec<(String, Tensor)>| {
        assert_eq!(arrays.len(), tensors.len());
        for ((name, back), (want_name, want)) in arrays.iter().zip(&tensors) {
            assert_eq!(name, want_name);
            assert_eq!(back.dtype(), want.dtype());
            assert_eq!(back.shape(), want.shape());
            assert_eq!(raw_bytes(back), raw_bytes(want), "{name}");
        }
    };
    check(read_npz(&write_npz(&refs).unwrap(), "memory").unwrap());
    let path = temp_path("round.npz");
    save_npz(&path, &refs).unwrap();
    let loaded = load_npz(&path);
    std::fs::remove_file(&path).unwrap();
    check(loaded.unwrap());
    // An empty archive is valid.
    assert!(read_npz(&write_npz(&[]).unwrap(), "empty").unwrap().is_empty());
}

#[test]
fn npz_with_deflated_and_stored_entries_written_by_the_zip_crate_is_read() {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;
    let mut r = rng(12);
    let a = random_tensor(&mut r, DType::F64, &[16, 8]);
    // Small integers compress well, so the deflated entry really is deflated.
    let b = Tensor::from_vec((0..300).map(|_| r.gen_range(0i32..4)).collect(), &[10, 30]).unwrap();
    let c = random_tensor(&mut r, DType::I8, &[5]);
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zw.start_file("a.npy", deflated).unwrap();
    zw.write_all(&write_npy(&a).unwrap()).unwrap();
    zw.add_directory("sub/", stored).unwrap();
    zw.start_file("sub/b.npy", deflated).unwrap();
    let b_bytes = write_npy(&b).unwrap();
    zw.write_all(&b_bytes).unwrap();
    zw.start_file("c.npy", stored).unwrap();
    zw.write_all(&write_npy(&c).unwrap()).unwrap();
    let archive = zw.finish().unwrap().into_inner();
    let mut check = zip::ZipArchive::new(std::io::Cursor::new(&archive)).unwrap();
    let entry = check.by_name("sub/b.npy").unwrap();
    assert_eq!(entry.compression(), CompressionMethod::Deflated);
    assert!(
        entry.compressed_size() < b_bytes.len() as u64 / 2,
        "entry b was not compressed"
    );
    drop(entry);

    let arrays = read_npz(&archive, "deflated.npz").unwrap();
    let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "sub/b", "c"]);
    assert_eq!(raw_bytes(&arrays[0].1), raw_bytes(&a));
    assert_eq!(arrays[1].1.to_vec::<i32>().unwrap(), b.to_vec::<i32>().unwrap());
    assert_eq!(raw_bytes(&arrays[2].1), raw_bytes(&c));
}

#[test]
fn npz_problems_are_errors_that_name_the_entry() {
    use zip::write::SimpleFileOptions;
    let mut r = rng(13);
    let t = random_tensor(&mut r, DType::F32, &[3]);

    // Not a zip at all.
    assert!(matches!(
        read_npz(b"\x93NUMPY not a zip", "x.npz"),
        Err(Error::Format { .. })
    ));
    assert!(matches!(read_npz(&[], "x.npz"), Err(Error::Format { .. })));

    // A non-.npy entry.
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zw.start_file("readme.txt", SimpleFileOptions::default()).unwrap();
    zw.write_all(b"hello").unwrap();
    let archive = zw.finish().unwrap().into_inner();
    let msg = read_npz(&archive, "x.npz").unwrap_err().to_string();
    assert!(msg.contains("readme.txt") && msg.contains("not a .npy"), "{msg}");

    // A broken .npy inside names the entry.
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zw.start_file("w.npy", SimpleFileOptions::default()).unwrap();
    let npy = write_npy(&t).unwrap();
    zw.write_all(&npy[..npy.len() - 2]).unwrap();
    let archive = zw.finish().unwrap().into_inner();
    let msg = read_npz(&archive, "x.npz").unwrap_err().to_string();
    assert!(msg.contains("entry `w.npy`") && msg.contains("truncated"), "{msg}");

    // Every truncation and many corruptions of a valid archive are errors, not panics.
    let good = write_npz(&[("a", &t), ("b", &t)]).unwrap();
    for len in 0..good.len() {
        assert!(read_npz(&good[..len], "t.npz").is_err(), "prefix {len}");
    }
    for _ in 0..500 {
        let mut bad = good.clone();
        let at = r.gen_range(0..bad.len());
        bad[at] ^= 1 << r.gen_range(0..8);
        let _ = read_npz(&bad, "flipped.npz");
    }

    // Duplicate names cannot be written.
    let msg = write_npz(&[("a", &t), ("a", &t)]).unwrap_err().to_string();
    assert!(msg.contains("`a`"), "{msg}");
}
