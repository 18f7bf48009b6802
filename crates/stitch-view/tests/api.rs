//! The JSON API, over HTTP, on a small graph built here with seeded random
//! weights: counts, layouts, the inspector, constant statistics (checked
//! against values computed in the test) and the compiled view.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use stitch_core::quant::{dequantize_row, quantize_row};
use stitch_core::{DType, Dim, Graph, QuantFormat, Tensor, Value};
use stitch_view::{serve, Viewer};

struct Fixture {
    graph: Graph,
    outputs: Vec<Value>,
    w0: Vec<f32>,
    packed_values: Vec<f32>,
}

/// x[batch, 8] → layer0: tanh(x·w0 + b0) then an elementwise chain → layer1:
/// quant_matmul with a Q8_0 weight → plus a variable, which is then assigned.
fn fixture() -> Fixture {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, vec![Dim::sym("batch"), Dim::Known(8)]);
    g.push_scope("layer0");
    let w0: Vec<f32> = (0..8 * 32).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b0: Vec<f32> = (0..32).map(|_| rng.gen_range(-0.5..0.5)).collect();
    let w = g.constant(Tensor::from_vec(w0.clone(), &[8, 32]).unwrap());
    let b = g.constant(Tensor::from_vec(b0, &[32]).unwrap());
    let m = g.matmul(x, w).unwrap();
    let a = g.add(m, b).unwrap();
    let t = g.tanh(a).unwrap();
    let e = g.exp(t).unwrap();
    let h = g.mul(e, t).unwrap();
    g.pop_scope();
    g.push_scope("layer1");
    let fmt = QuantFormat::Q8_0;
    let rows: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..32).map(|_| rng.gen_range(-2.0..2.0)).collect())
        .collect();
    let mut bytes = vec![0u8; 4 * fmt.block_bytes()];
    let mut packed_values = vec![];
    for (r, row) in rows.iter().enumerate() {
        let out = &mut bytes[r * fmt.block_bytes()..(r + 1) * fmt.block_bytes()];
        quantize_row(fmt, row, out).unwrap();
        let mut back = vec![0f32; 32];
        dequantize_row(fmt, out, &mut back).unwrap();
        packed_values.extend(back);
    }
    let packed = g.constant(Tensor::from_vec(bytes, &[4, fmt.block_bytes()]).unwrap());
    let q = g.quant_matmul(h, packed, fmt).unwrap();
    g.pop_scope();
    let init: Vec<f32> = (0..4).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let var = g.variable("state", Tensor::from_vec(init, &[4]).unwrap());
    let s = g.read(var).unwrap();
    let y = g.add(q, s).unwrap();
    let last = g.sum(y, &[0], false).unwrap();
    g.assign(var, last).unwrap();
    Fixture {
        graph: g,
        outputs: vec![y],
        w0,
        packed_values,
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn get_json(addr: std::net::SocketAddr, path: &str) -> Json {
    let (code, body) = get(addr, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn node_id(g: &Graph, op: &str) -> usize {
    g.nodes().iter().position(|n| n.op.kind() == op).unwrap()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (
        m,
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

#[test]
fn summary_layout_inspector_and_constants_describe_the_graph() {
    let f = fixture();
    let n = f.graph.nodes().len();
    let viewer = Arc::new(Viewer::new("fixture", f.graph.clone(), "cpu"));
    viewer.compile_now(&f.outputs);
    let server = serve(viewer, 0).unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());

    // Summary: counts and the op histogram.
    let s = get_json(addr, "/api/summary");
    assert_eq!(s["nodes"], n);
    let ops: Vec<(String, usize)> = serde_json::from_value(s["ops"].clone()).unwrap();
    assert_eq!(ops.iter().map(|o| o.1).sum::<usize>(), n);
    assert!(ops.contains(&("matmul".to_string(), 1)));
    assert!(ops.contains(&("quant_matmul".to_string(), 1)));
    assert_eq!(s["constants"], 3);

    // The top level shows the two scopes folded; their counts add up to the graph.
    let l = get_json(addr, "/api/layout?view=source");
    let items = l["items"].as_array().unwrap();
    let groups: Vec<&Json> = items.iter().filter(|i| i["kind"] == "group").collect();
    let labels: Vec<&str> = groups.iter().map(|g| g["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["layer0", "layer1"]);
    let inside: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    let top_nodes = items.iter().filter(|i| i["kind"] == "node").count() as u64;
    assert_eq!(inside + top_nodes, n as u64);
    assert_eq!(groups[0]["count"], 7, "layer0: 2 constants and 5 ops");
    // Edges join items of the level: x feeds layer0, layer0 feeds layer1.
    let key_index = |k: &str| items.iter().position(|i| i["key"] == k).unwrap();
    let x_key = format!("n{}", f.graph.find("x").unwrap().0);
    let edges: Vec<(usize, usize)> = serde_json::from_value(l["edges"].clone()).unwrap();
    let (g0, g1) = (groups[0]["key"].as_str().unwrap(), groups[1]["key"].as_str().unwrap());
    assert!(edges.contains(&(key_index(&x_key), key_index(g0))));
    assert!(edges.contains(&(key_index(g0), key_index(g1))));
    // Items never overlap.
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            let r = |j: &Json, k: &str| j[k].as_f64().unwrap();
            let apart = r(a, "x") + r(a, "w") <= r(b, "x")
                || r(b, "x") + r(b, "w") <= r(a, "x")
                || r(a, "y") + r(a, "h") <= r(b, "y")
                || r(b, "y") + r(b, "h") <= r(a, "y");
            assert!(apart, "{a} overlaps {b}");
        }
    }
    // Expanding layer0 lays out its members inside it.
    let l = get_json(addr, &format!("/api/layout?view=source&expanded={g0}"));
    let g = l["items"].as_array().unwrap().iter().find(|i| i["key"] == g0).unwrap();
    assert_eq!(g["expanded"], true);
    assert_eq!(g["inner"]["items"].as_array().unwrap().len(), 7);

    // Inspector: the matmul's inputs, types and consumer.
    let mm = node_id(&f.graph, "matmul");
    let j = get_json(addr, &format!("/api/node?view=source&id={mm}"));
    assert_eq!(j["op"], "matmul");
    assert_eq!(j["inputs"][0]["name"], "x");
    assert_eq!(
        j["inputs"][0]["type"],
        f.graph.ty(f.graph.nodes()[mm].inputs[0]).to_string()
    );
    assert_eq!(j["outputs"][0], f.graph.nodes()[mm].outputs[0].to_string());
    assert_eq!(j["consumers"][0]["op"], "add");
    assert_eq!(j["path"], serde_json::json!([g0]));

    // A variable's reads and writes.
    let rd = node_id(&f.graph, "read_variable");
    let j = get_json(addr, &format!("/api/node?view=source&id={rd}"));
    assert_eq!(j["variable"]["name"], "state");
    assert_eq!(j["variable"]["reads"][0]["id"], rd);
    assert_eq!(j["variable"]["writes"][0]["op"], "assign");

    // Constants: largest first, with the packed weight's format.
    let c = get_json(addr, "/api/constants");
    let list = c["constants"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["bytes"], 8 * 32 * 4);
    let packed = list.iter().find(|c| c["dtype"] == "u8").unwrap();
    assert_eq!(packed["format"], "Q8_0");

    // Dense constant statistics against values computed here.
    let w_id = list[0]["id"].as_u64().unwrap();
    let st = get_json(addr, &format!("/api/constant?id={w_id}"));
    let w: Vec<f64> = f.w0.iter().map(|&x| f64::from(x)).collect();
    let (m, sd) = mean_std(&w);
    assert!(close(
        st["min"].as_f64().unwrap(),
        w.iter().cloned().fold(f64::INFINITY, f64::min)
    ));
    assert!(close(
        st["max"].as_f64().unwrap(),
        w.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
    ));
    assert!(close(st["mean"].as_f64().unwrap(), m));
    assert!(close(st["std"].as_f64().unwrap(), sd));
    let hist: Vec<u64> = serde_json::from_value(st["histogram"].clone()).unwrap();
    assert_eq!(hist.iter().sum::<u64>(), 256);
    // Small enough for one cell per element: the heat map is the matrix.
    assert_eq!(st["heatmap"]["rows"], 8);
    assert_eq!(st["heatmap"]["cols"], 32);
    assert!(close(
        st["heatmap"]["values"][3 * 32 + 5].as_f64().unwrap(),
        w[3 * 32 + 5]
    ));

    // Packed constant: statistics of the dequantized values, logical shape.
    let p_id = packed["id"].as_u64().unwrap();
    let st = get_json(addr, &format!("/api/constant?id={p_id}"));
    assert_eq!(st["shape"], serde_json::json!([4, 32]));
    let pv: Vec<f64> = f.packed_values.iter().map(|&x| f64::from(x)).collect();
    let (m, sd) = mean_std(&pv);
    assert!(close(st["mean"].as_f64().unwrap(), m));
    assert!(close(st["std"].as_f64().unwrap(), sd));

    // Errors name what is wrong.
    let (code, body) = get(addr, &format!("/api/node?view=source&id={}", n + 5));
    assert_eq!(code, 404);
    assert!(body.contains(&format!("the graph has {n} nodes")), "{body}");
    let (code, body) = get(addr, "/api/layout?view=nonsense");
    assert_eq!(code, 400);
    assert!(body.contains("nonsense"), "{body}");
    let (code, _) = get(addr, &format!("/api/constant?id={mm}"));
    assert_eq!(code, 400);

    // Search by name and by op.
    let found = get_json(addr, "/api/find?view=source&op=tanh");
    assert_eq!(found["count"], 1);
    assert_eq!(found["groups"][g0], 1);
    let found = get_json(addr, "/api/find?view=source&q=LAYER1%2F");
    assert_eq!(found["count"], 2, "the packed weight and the quant_matmul: {found}");

    // The compiled view: a fused region whose members are the chain's ops.
    let s = get_json(addr, "/api/summary");
    assert_eq!(s["compiled"]["status"], "ready", "{s}");
    assert!(s["compiled"]["fused"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["compiled"]["fallback"], 0);
    let fused = get_json(addr, "/api/find?view=compiled&op=fused");
    let fid = fused["list"][0]["id"].as_u64().unwrap();
    let j = get_json(addr, &format!("/api/node?view=compiled&id={fid}"));
    let member_ops: Vec<&str> = j["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["op"].as_str().unwrap())
        .collect();
    assert!(member_ops.len() >= 2, "{j}");
    // Expanding the region shows its members, joined in a chain.
    let mut path: Vec<String> = serde_json::from_value(j["path"].clone()).unwrap();
    path.push(format!("n{fid}"));
    let l = get_json(addr, &format!("/api/layout?view=compiled&expanded={}", path.join(",")));
    let text = l.to_string();
    assert!(text.contains(&format!("\"m{fid}.0\"")), "{text}");
    assert!(text.contains(&format!("\"m{fid}.1\"")), "{text}");

    // The page and its assets are served.
    let (code, html) = get(addr, "/");
    assert_eq!(code, 200);
    assert!(html.contains("/app.js"));
    assert_eq!(get(addr, "/app.js").0, 200);
    assert_eq!(get(addr, "/nope").0, 404);
    server.stop();
}

#[test]
fn wide_flat_graphs_are_split_into_parts_no_larger_than_the_cap() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [4]);
    let mut v = x;
    for _ in 0..1000 {
        let c: Vec<f32> = (0..4).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let c = g.constant(Tensor::from_vec(c, &[4]).unwrap());
        v = g.add(v, c).unwrap();
    }
    let viewer = Viewer::new("wide", g.clone(), "cpu");
    let vg = viewer.source();
    for grp in &vg.groups {
        assert!(
            grp.items.len() <= stitch_view::model::MAX_ITEMS_PER_GROUP,
            "{}",
            grp.path
        );
    }
    assert_eq!(vg.groups[0].node_count, g.nodes().len());
    // Every node is reachable from the root exactly once.
    let mut all = vg.nodes_below(0);
    all.dedup();
    assert_eq!(all.len(), g.nodes().len());
    let server = serve(Arc::new(viewer), 0).unwrap();
    let t0 = std::time::Instant::now();
    let l = get_json(server.addr(), "/api/layout?view=source");
    assert!(l["items"].as_array().unwrap().len() <= stitch_view::model::MAX_ITEMS_PER_GROUP);
    assert!(t0.elapsed().as_secs_f64() < 5.0);
    server.stop();
}

#[test]
fn a_busy_port_is_reported_clearly() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let viewer = Arc::new(Viewer::new("x", Graph::new(), "cpu"));
    let err = serve(viewer, port).err().unwrap();
    assert!(
        err.contains("already in use") && err.contains(&port.to_string()),
        "{err}"
    );
}
