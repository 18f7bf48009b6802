//! The HTTP server: the embedded page and a JSON API over a [`Viewer`].
//!
//! Binds 127.0.0.1 only. Routes:
//!
//! | route | answer |
//! |---|---|
//! | `/`, `/app.js`, `/style.css` | the page (embedded in the binary) |
//! | `/api/summary` | title, node and edge counts, op histogram, compiled-view status |
//! | `/api/layout?view=V&expanded=K,K` | nested layout of the visible groups |
//! | `/api/node?view=V&id=N` | inspector record of node N |
//! | `/api/find?view=V&op=OP` or `&q=TEXT` | matching nodes and the groups holding them |
//! | `/api/constants` | constants, largest first |
//! | `/api/constant?id=N` | a constant's statistics, histogram and heat map |
//!
//! `V` is `source` (the graph as loaded) or `compiled` (the plan for the device).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value as Json};
use stitch_core::{Graph, Op, QuantFormat, Value};

use crate::layout::{layered, Placement};
use crate::load::{compile, CompiledGraph};
use crate::model::{Item, ViewGraph};
use crate::stats::constant_stats;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Box sizes of the drawing, in px.
const NODE_H: f64 = 40.0;
const GROUP_H: f64 = 48.0;
const PAD: f64 = 14.0;
const HEADER: f64 = 26.0;

/// State of the compiled view.
#[derive(Clone)]
enum Compiled {
    Pending,
    Ready(Arc<ViewGraph>),
    Failed(String),
}

/// A cached layout: (compiled view?, level key, item sizes).
type LayoutKey = (bool, String, Vec<(u64, u64)>);
/// Edges between the items of a level.
type Edges = Arc<Vec<(usize, usize)>>;

/// What the server shows: one graph, and its compiled plan once ready.
pub struct Viewer {
    title: String,
    device: String,
    graph: Arc<Graph>,
    source: Arc<ViewGraph>,
    compiled: Mutex<Compiled>,
    layouts: Mutex<HashMap<LayoutKey, Arc<Placement>>>,
    edges: Mutex<HashMap<(bool, String), Edges>>,
    stats: Mutex<HashMap<usize, Arc<Json>>>,
}

impl Viewer {
    /// A viewer of `graph`; the compiled view stays pending until
    /// [`Viewer::compile_now`] or [`Viewer::compile_in_background`].
    pub fn new(title: &str, graph: Graph, device: &str) -> Viewer {
        let source = ViewGraph::new(&graph, &[], &[device.to_string()]);
        Viewer {
            title: title.to_string(),
            device: device.to_string(),
            graph: Arc::new(graph),
            source: Arc::new(source),
            compiled: Mutex::new(Compiled::Pending),
            layouts: Mutex::default(),
            edges: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    /// The source graph as the viewer describes it.
    pub fn source(&self) -> &ViewGraph {
        &self.source
    }

    /// Compiles `outputs` for the viewer's device now.
    pub fn compile_now(&self, outputs: &[Value]) {
        let result = compile(&self.graph, outputs, &self.device);
        self.set_compiled(result);
    }

    /// Compiles on another thread; the page shows "compiling" until done.
    pub fn compile_in_background(self: &Arc<Self>, outputs: Vec<Value>) -> JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || me.compile_now(&outputs))
    }

    fn set_compiled(&self, result: Result<CompiledGraph, String>) {
        let state = match result {
            Ok(c) => Compiled::Ready(Arc::new(ViewGraph::new(&c.graph, &c.devices, &c.device_names))),
            Err(e) => Compiled::Failed(e),
        };
        if let Ok(mut s) = self.compiled.lock() {
            *s = state;
        }
    }

    fn compiled(&self) -> Compiled {
        self.compiled
            .lock()
            .map(|c| c.clone())
            .unwrap_or(Compiled::Failed("lock poisoned".into()))
    }

    fn view(&self, name: Option<&str>) -> Result<(bool, Arc<ViewGraph>), (u16, String)> {
        match name.unwrap_or("source") {
            "source" => Ok((false, self.source.clone())),
            "compiled" => match self.compiled() {
                Compiled::Ready(v) => Ok((true, v)),
                Compiled::Pending => Err((503, "the compiled view is still compiling; try again shortly".into())),
                Compiled::Failed(e) => Err((500, format!("the compiled view is unavailable: {e}"))),
            },
            other => Err((400, format!("unknown view '{other}' (expected source or compiled)"))),
        }
    }

    /// Answers one request: (status, content type, body).
    pub fn handle(&self, url: &str) -> (u16, &'static str, String) {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let q = parse_query(query);
        let get = |k: &str| q.get(k).map(String::as_str);
        match path {
            "/" | "/index.html" => (200, "text/html; charset=utf-8", INDEX_HTML.to_string()),
            "/app.js" => (200, "text/javascript; charset=utf-8", APP_JS.to_string()),
            "/style.css" => (200, "text/css; charset=utf-8", STYLE_CSS.to_string()),
            p if p.starts_with("/api/") => {
                let r = match p {
                    "/api/summary" => Ok(self.summary()),
                    "/api/layout" => self.view(get("view")).and_then(|(c, v)| {
                        let expanded: Vec<&str> = get("expanded").unwrap_or("").split(',').collect();
                        self.layout(c, &v, &expanded)
                    }),
                    "/api/node" => self.view(get("view")).and_then(|(_, v)| {
                        let id = parse_id(get("id"), v.nodes.len())?;
                        Ok(node_json(&v, id))
                    }),
                    "/api/find" => self.view(get("view")).map(|(_, v)| find(&v, get("op"), get("q"))),
                    "/api/constants" => Ok(self.constants()),
                    "/api/constant" => parse_id(get("id"), self.source.nodes.len()).and_then(|id| self.constant(id)),
                    _ => Err((404, format!("no API route {p}"))),
                };
                match r {
                    Ok(j) => (200, "application/json", j.to_string()),
                    Err((code, msg)) => (code, "application/json", json!({ "error": msg }).to_string()),
                }
            }
            _ => (404, "text/plain; charset=utf-8", format!("not found: {path}")),
        }
    }

    fn summary(&self) -> Json {
        let s = &self.source;
        let compiled = match self.compiled() {
            Compiled::Pending => json!({ "status": "compiling" }),
            Compiled::Failed(e) => json!({ "status": "failed", "error": e }),
            Compiled::Ready(c) => json!({
                "status": "ready",
                "nodes": c.nodes.len(),
                "edges": c.edge_count(),
                "ops": c.op_counts(),
                "fused": c.nodes.iter().filter(|n| !n.members.is_empty()).count(),
                "fallback": c.nodes.iter().filter(|n| n.device != 0).count(),
            }),
        };
        json!({
            "title": self.title,
            "device": self.device,
            "nodes": s.nodes.len(),
            "edges": s.edge_count(),
            "groups": s.reachable_groups,
            "ops": s.op_counts(),
            "constants": s.nodes.iter().filter(|n| n.op == "constant").count(),
            "variables": s.variables.iter().map(|v| json!({ "name": v.name, "type": v.ty })).collect::<Vec<_>>(),
            "compiled": compiled,
        })
    }

    /// Edges between the items of group `g` (indices into its item list).
    fn group_edges(&self, compiled: bool, v: &ViewGraph, g: usize) -> Edges {
        let key = (compiled, format!("g{g}"));
        if let Some(e) = self.edges.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return e;
        }
        let index: HashMap<Item, usize> = v.groups[g].items.iter().enumerate().map(|(k, it)| (*it, k)).collect();
        let mut edges = vec![];
        for i in v.nodes_below(g) {
            let Some(to) = v.item_in(g, i).and_then(|it| index.get(&it).copied()) else {
                continue;
            };
            for &(p, _) in &v.nodes[i].inputs {
                if let Some(from) = v.item_in(g, p).and_then(|it| index.get(&it).copied()) {
                    if from != to {
                        edges.push((from, to));
                    }
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let edges = Arc::new(edges);
        if let Ok(mut m) = self.edges.lock() {
            m.insert(key, edges.clone());
        }
        edges
    }

    fn place(&self, key: LayoutKey, sizes: &[(f64, f64)], edges: &[(usize, usize)]) -> Arc<Placement> {
        if let Some(p) = self.layouts.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return p;
        }
        let p = layered(sizes, edges);
        let p = Arc::new(p);
        if let Ok(mut m) = self.layouts.lock() {
            m.insert(key, p.clone());
        }
        p
    }

    fn layout(&self, compiled: bool, v: &ViewGraph, expanded: &[&str]) -> Result<Json, (u16, String)> {
        let expanded: std::collections::HashSet<&str> = expanded.iter().copied().filter(|k| !k.is_empty()).collect();
        let t0 = std::time::Instant::now();
        let mut level = self.group_level(compiled, v, 0, &expanded, 0);
        if let Some(o) = level.as_object_mut() {
            o.insert("title".into(), json!(self.title));
            o.insert("nodes".into(), json!(v.nodes.len()));
            o.insert("server_ms".into(), json!(t0.elapsed().as_secs_f64() * 1e3));
        }
        Ok(level)
    }

    fn group_level(
        &self,
        compiled: bool,
        v: &ViewGraph,
        g: usize,
        expanded: &std::collections::HashSet<&str>,
        depth: usize,
    ) -> Json {
        let mut items: Vec<Json> = vec![];
        let mut sizes = vec![];
        for it in &v.groups[g].items {
            let (mut j, size) = match *it {
                Item::Group(s) => {
                    let grp = &v.groups[s];
                    let key = format!("g{s}");
                    if expanded.contains(key.as_str()) && depth < 32 {
                        let inner = self.group_level(compiled, v, s, expanded, depth + 1);
                        let w = inner["w"].as_f64().unwrap_or(0.0).max(label_width(&grp.label) + 16.0) + 2.0 * PAD;
                        let h = inner["h"].as_f64().unwrap_or(0.0) + HEADER + PAD;
                        (
                            json!({ "key": key, "kind": "group", "label": grp.label, "path": grp.path,
                                    "count": grp.node_count, "expanded": true, "inner": inner }),
                            (w, h),
                        )
                    } else {
                        (
                            json!({ "key": key, "kind": "group", "label": grp.label, "path": grp.path,
                                    "count": grp.node_count, "expanded": false }),
                            ((label_width(&grp.label) + 16.0).max(120.0), GROUP_H),
                        )
                    }
                }
                Item::Node(i) => {
                    let n = &v.nodes[i];
                    let label = n.name.rsplit('/').next().unwrap_or(&n.name);
                    let key = format!("n{i}");
                    let mut j = json!({ "key": key, "kind": if n.members.is_empty() { "node" } else { "fused" },
                                        "id": i, "label": label, "op": n.op, "fallback": n.device != 0,
                                        "members": n.members.len() });
                    if !n.members.is_empty() && expanded.contains(key.as_str()) {
                        let inner = self.member_level(compiled, v, i);
                        let w = inner["w"]
                            .as_f64()
                            .unwrap_or(0.0)
                            .max(label_width(&format!("- {label} (fused)")))
                            + 2.0 * PAD;
                        let h = inner["h"].as_f64().unwrap_or(0.0) + HEADER + PAD;
                        j["expanded"] = json!(true);
                        j["inner"] = inner;
                        (j, (w, h))
                    } else {
                        let w = label_width(label).max(label_width(&n.op));
                        (j, (w, NODE_H))
                    }
                }
            };
            j["w"] = json!(size.0);
            j["h"] = json!(size.1);
            items.push(j);
            sizes.push(size);
        }
        let edges = self.group_edges(compiled, v, g);
        let key = (compiled, format!("g{g}"), size_key(&sizes));
        let p = self.place(key, &sizes, &edges);
        for (j, &(x, y)) in items.iter_mut().zip(&p.positions) {
            j["x"] = json!(x);
            j["y"] = json!(y);
        }
        json!({ "key": format!("g{g}"), "w": p.width, "h": p.height, "items": items, "edges": *edges })
    }

    fn member_level(&self, compiled: bool, v: &ViewGraph, i: usize) -> Json {
        let members = &v.nodes[i].members;
        let sizes: Vec<(f64, f64)> = members
            .iter()
            .map(|m| {
                (
                    label_width(m.name.rsplit('/').next().unwrap_or(&m.name)).max(label_width(&m.op)),
                    NODE_H,
                )
            })
            .collect();
        let edges: Vec<(usize, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(j, m)| m.from_members.iter().map(move |&k| (k, j)))
            .collect();
        let p = self.place((compiled, format!("f{i}"), size_key(&sizes)), &sizes, &edges);
        let items: Vec<Json> = members
            .iter()
            .enumerate()
            .map(|(j, m)| {
                json!({ "key": format!("m{i}.{j}"), "kind": "member", "id": i, "label": m.name.rsplit('/').next().unwrap_or(&m.name),
                        "name": m.name, "op": m.op, "x": p.positions[j].0, "y": p.positions[j].1, "w": sizes[j].0, "h": sizes[j].1 })
            })
            .collect();
        json!({ "key": format!("f{i}"), "w": p.width, "h": p.height, "items": items, "edges": edges })
    }

    fn constants(&self) -> Json {
        let v = &self.source;
        let mut list: Vec<(usize, usize)> = self
            .graph
            .nodes()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Constant(t) => Some((i, t.numel() * t.dtype().size_in_bytes())),
                _ => None,
            })
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let items: Vec<Json> = list
            .iter()
            .map(|&(i, bytes)| {
                let t = match &self.graph.nodes()[i].op {
                    Op::Constant(t) => t,
                    _ => unreachable!("filtered to constants above"),
                };
                json!({ "id": i, "name": v.nodes[i].name, "dtype": t.dtype().to_string(), "shape": t.shape(),
                        "bytes": bytes, "format": quant_format(v, i).map(|f| f.to_string()) })
            })
            .collect();
        json!({ "constants": items })
    }

    fn constant(&self, id: usize) -> Result<Json, (u16, String)> {
        if let Some(j) = self.stats.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok((*j).clone());
        }
        let Op::Constant(t) = &self.graph.nodes()[id].op else {
            return Err((
                400,
                format!("node {id} ({}) is not a constant", self.source.nodes[id].name),
            ));
        };
        let format = quant_format(&self.source, id);
        let s = constant_stats(t, format).map_err(|e| (500, format!("constant {id}: {e}")))?;
        let j = json!({
            "id": id, "name": self.source.nodes[id].name, "dtype": t.dtype().to_string(),
            "stored_shape": t.shape(), "shape": s.shape, "format": format.map(|f| f.to_string()),
            "bytes": t.numel() * t.dtype().size_in_bytes(),
            "count": s.count, "min": s.min, "max": s.max, "mean": s.mean, "std": s.std, "non_finite": s.non_finite,
            "histogram": s.histogram,
            "heatmap": s.heatmap.map(|h| json!({ "rows": h.rows, "cols": h.cols, "values": h.values })),
            "consumers": self.source.consumers[id].iter().map(|&c| node_ref(&self.source, c)).collect::<Vec<_>>(),
        });
        if let Ok(mut m) = self.stats.lock() {
            m.insert(id, Arc::new(j.clone()));
        }
        Ok(j)
    }
}

fn size_key(sizes: &[(f64, f64)]) -> Vec<(u64, u64)> {
    sizes.iter().map(|&(w, h)| (w.to_bits(), h.to_bits())).collect()
}

/// Width of a box holding `label` in the page's 12px monospace font.
fn label_width(label: &str) -> f64 {
    (label.chars().count() as f64 * 7.3 + 20.0).clamp(70.0, 240.0)
}

/// The quantization format of a packed constant, from the op that reads it
/// (directly, or through a `gather` of rows, as an embedding table is read).
fn quant_format(v: &ViewGraph, id: usize) -> Option<QuantFormat> {
    v.consumers[id].iter().find_map(|&c| {
        let n = &v.nodes[c];
        match n.op.as_str() {
            "dequantize" if n.inputs.first().map(|x| x.0) == Some(id) => n.quant,
            "quant_matmul" if n.inputs.get(1).map(|x| x.0) == Some(id) => n.quant,
            "gather" if n.inputs.first().map(|x| x.0) == Some(id) => v.consumers[c].iter().find_map(|&d| {
                let m = &v.nodes[d];
                (m.op == "dequantize" && m.inputs.first().map(|x| x.0) == Some(c))
                    .then_some(m.quant)
                    .flatten()
            }),
            _ => None,
        }
    })
}

fn parse_id(s: Option<&str>, len: usize) -> Result<usize, (u16, String)> {
    let s = s.ok_or((400, "missing parameter id".to_string()))?;
    let id: usize = s.parse().map_err(|_| (400, format!("id '{s}' is not a node index")))?;
    if id >= len {
        return Err((404, format!("no node {id}: the graph has {len} nodes")));
    }
    Ok(id)
}

fn node_ref(v: &ViewGraph, i: usize) -> Json {
    json!({ "id": i, "name": v.nodes[i].name, "op": v.nodes[i].op })
}

fn node_json(v: &ViewGraph, i: usize) -> Json {
    let n = &v.nodes[i];
    let inputs: Vec<Json> = n
        .inputs
        .iter()
        .map(|&(p, o)| {
            let ty = v
                .nodes
                .get(p)
                .and_then(|x| x.outputs.get(o as usize))
                .cloned()
                .unwrap_or_default();
            json!({ "id": p, "output": o, "name": v.nodes[p].name, "op": v.nodes[p].op, "type": ty })
        })
        .collect();
    let variable = n.variable.and_then(|k| v.variables.get(k)).map(|var| {
        json!({ "name": var.name, "type": var.ty,
                "reads": var.reads.iter().map(|&r| node_ref(v, r)).collect::<Vec<_>>(),
                "writes": var.writes.iter().map(|&w| node_ref(v, w)).collect::<Vec<_>>() })
    });
    json!({
        "id": i, "name": n.name, "op": n.op, "attrs": n.attrs,
        "device": n.device, "device_name": v.devices.get(n.device).cloned().unwrap_or_default(),
        "fallback": n.device != 0,
        "inputs": inputs, "outputs": n.outputs,
        "consumers": v.consumers[i].iter().map(|&c| node_ref(v, c)).collect::<Vec<_>>(),
        "variable": variable,
        "quant": n.quant.map(|f| f.to_string()),
        "members": n.members.iter().map(|m| json!({ "name": m.name, "op": m.op })).collect::<Vec<_>>(),
        "path": v.ancestors(i).iter().map(|g| format!("g{g}")).collect::<Vec<_>>(),
    })
}

/// Nodes whose op is `op` or whose name contains `q` (case-insensitive), and for
/// each group the number of matches inside it.
fn find(v: &ViewGraph, op: Option<&str>, q: Option<&str>) -> Json {
    let q = q.map(str::to_lowercase).filter(|s| !s.is_empty());
    let matches: Vec<usize> = (0..v.nodes.len())
        .filter(|&i| {
            let n = &v.nodes[i];
            op.is_some_and(|o| n.op == o) || q.as_ref().is_some_and(|q| n.name.to_lowercase().contains(q.as_str()))
        })
        .collect();
    let mut groups: HashMap<String, usize> = HashMap::new();
    for &i in &matches {
        for g in v.ancestors(i) {
            *groups.entry(format!("g{g}")).or_default() += 1;
        }
    }
    json!({
        "count": matches.len(),
        "nodes": matches.iter().take(5000).map(|&i| format!("n{i}")).collect::<Vec<_>>(),
        "list": matches.iter().take(200).map(|&i| node_ref(v, i)).collect::<Vec<_>>(),
        "groups": groups,
    })
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running server.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }

    /// Stops accepting requests and waits for the workers.
    pub fn stop(self) {
        self.http.unblock();
        for _ in 1..self.workers.len() {
            self.http.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Serves `viewer` on 127.0.0.1:`port` (0: any free port) with a few worker threads.
pub fn serve(viewer: Arc<Viewer>, port: u16) -> Result<Server, String> {
    let http = tiny_http::Server::http(("127.0.0.1", port)).map_err(|e| {
        let busy = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse);
        if busy {
            format!("port {port} on 127.0.0.1 is already in use; pick another with --port N (0: any free port)")
        } else {
            format!("cannot listen on 127.0.0.1:{port}: {e}")
        }
    })?;
    let addr = http
        .server_addr()
        .to_ip()
        .ok_or_else(|| "the server is not listening on an IP address".to_string())?;
    let http = Arc::new(http);
    let workers = (0..4)
        .map(|_| {
            let (http, viewer) = (http.clone(), viewer.clone());
            std::thread::spawn(move || {
                while let Ok(req) = http.recv() {
                    let (code, ctype, body) = viewer.handle(req.url());
                    let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", ctype) {
                        resp = resp.with_header(h);
                    }
                    let _ = req.respond(resp);
                }
            })
        })
        .collect();
    Ok(Server { http, addr, workers })
}
