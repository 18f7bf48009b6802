//! Layered (Sugiyama) layout of one level of a graph at a time.
//!
//! The `rust-sugiyama` crate ranks the items, orders each layer to reduce
//! crossings and assigns coordinates; this module then packs layers so items of
//! different sizes (an expanded group is a large box) never overlap, and places
//! disconnected parts side by side. It knows nothing about stitch graphs.

use std::collections::HashMap;

/// Gap between items in a layer and between layers, in layout units (px).
pub const GAP_X: f64 = 24.0;
/// Gap between layers.
pub const GAP_Y: f64 = 36.0;

/// Layouts of connected components as `rust-sugiyama` returns them: centres by
/// vertex, then width and height.
type Components = Vec<(Vec<(usize, (f64, f64))>, f64, f64)>;

/// Where each item goes: top-left corners, plus the size of the whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Top-left corner of each item, in input order.
    pub positions: Vec<(f64, f64)>,
    /// Width of the bounding box.
    pub width: f64,
    /// Height of the bounding box.
    pub height: f64,
}

/// Lays out items of `sizes` (width, height) joined by directed `edges`
/// (item indices; repeats and self-loops are ignored). Edges may form cycles.
pub fn layered(sizes: &[(f64, f64)], edges: &[(usize, usize)]) -> Placement {
    let n = sizes.len();
    if n == 0 {
        return Placement {
            positions: vec![],
            width: 0.0,
            height: 0.0,
        };
    }
    let mut es: Vec<(u32, u32)> = edges
        .iter()
        .filter(|(a, b)| a != b && *a < n && *b < n)
        .map(|&(a, b)| (a as u32, b as u32))
        .collect();
    es.sort_unstable();
    es.dedup();
    let vertices: Vec<(u32, (f64, f64))> = sizes.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect();
    let config = rust_sugiyama::configure::Config {
        vertex_spacing: GAP_X,
        dummy_vertices: true,
        transpose: n <= 60,
        ..Default::default()
    };
    // The library returns one layout per connected component, with centre
    // coordinates whose y grows with the layer.
    let components = std::panic::catch_unwind(|| rust_sugiyama::from_vertices_and_edges(&vertices, &es, &config))
        .unwrap_or_else(|_| fallback_layers(n, &es));
    let mut positions = vec![(0.0, 0.0); n];
    let mut x0 = 0.0f64;
    let mut height = 0.0f64;
    let mut placed = vec![false; n];
    for (comp, _, _) in components {
        let items: Vec<(usize, f64, f64)> = comp
            .into_iter()
            .filter(|(i, _)| *i < n && !placed[*i])
            .map(|(i, (x, y))| (i, x, y))
            .collect();
        if items.is_empty() {
            continue;
        }
        let (w, h) = pack(&items, sizes, x0, &mut positions);
        for &(i, _, _) in &items {
            placed[i] = true;
        }
        x0 += w + GAP_X * 2.0;
        height = height.max(h);
    }
    // Anything the library left out (should not happen) goes in a last column.
    for i in 0..n {
        if !placed[i] {
            positions[i] = (x0, 0.0);
            x0 += sizes[i].0 + GAP_X;
            height = height.max(sizes[i].1);
        }
    }
    Placement {
        positions,
        width: (x0 - GAP_X * 2.0).max(0.0),
        height,
    }
}

/// Rows by the library's y, each as tall as its tallest item; within a row,
/// the library's x order with items pushed apart until they do not overlap.
/// Returns the component's width and height.
fn pack(items: &[(usize, f64, f64)], sizes: &[(f64, f64)], x0: f64, out: &mut [(f64, f64)]) -> (f64, f64) {
    let mut rows: Vec<f64> = items.iter().map(|it| it.2).collect();
    rows.sort_by(f64::total_cmp);
    rows.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    let row_of = |y: f64| rows.iter().position(|r| (r - y).abs() < 1e-6).unwrap_or(0);
    let mut by_row: HashMap<usize, Vec<(usize, f64)>> = HashMap::new();
    for &(i, x, y) in items {
        by_row.entry(row_of(y)).or_default().push((i, x));
    }
    let mut top = 0.0;
    let mut min_x = f64::INFINITY;
    let mut max_x = f64::NEG_INFINITY;
    let mut tmp: Vec<(usize, f64, f64)> = vec![];
    for r in 0..rows.len() {
        let Some(row) = by_row.get_mut(&r) else { continue };
        row.sort_by(|a, b| a.1.total_cmp(&b.1));
        let row_h = row.iter().map(|(i, _)| sizes[*i].1).fold(0.0, f64::max);
        let mut right = f64::NEG_INFINITY;
        for &(i, cx) in row.iter() {
            let w = sizes[i].0;
            let left = (cx - w / 2.0).max(right + GAP_X);
            right = left + w;
            min_x = min_x.min(left);
            max_x = max_x.max(right);
            tmp.push((i, left, top + (row_h - sizes[i].1) / 2.0));
        }
        top += row_h + GAP_Y;
    }
    for (i, left, y) in tmp {
        out[i] = (x0 + left - min_x, y);
    }
    (max_x - min_x, (top - GAP_Y).max(0.0))
}

/// Longest-path layers in input order, used if the library panics.
fn fallback_layers(n: usize, edges: &[(u32, u32)]) -> Components {
    let mut layer = vec![0usize; n];
    let mut sorted = edges.to_vec();
    sorted.sort_by_key(|e| e.1);
    for &(a, b) in &sorted {
        if a < b {
            layer[b as usize] = layer[b as usize].max(layer[a as usize] + 1);
        }
    }
    let mut count: HashMap<usize, usize> = HashMap::new();
    let v = (0..n)
        .map(|i| {
            let c = count.entry(layer[i]).or_default();
            *c += 1;
            (i, (*c as f64 * 200.0, layer[i] as f64 * 100.0))
        })
        .collect();
    vec![(v, 0.0, 0.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(p: &Placement, sizes: &[(f64, f64)]) -> bool {
        for i in 0..sizes.len() {
            for j in i + 1..sizes.len() {
                let (a, b) = (p.positions[i], p.positions[j]);
                if a.0 < b.0 + sizes[j].0 && b.0 < a.0 + sizes[i].0 && a.1 < b.1 + sizes[j].1 && b.1 < a.1 + sizes[i].1
                {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn chain_is_laid_out_top_to_bottom_without_overlap() {
        let sizes = vec![(100.0, 30.0), (300.0, 200.0), (80.0, 30.0), (120.0, 30.0)];
        let edges = vec![(0, 1), (1, 2), (0, 3), (3, 2)];
        let p = layered(&sizes, &edges);
        assert!(!overlap(&p, &sizes));
        // Every edge points downwards.
        for &(a, b) in &edges {
            assert!(p.positions[a].1 + sizes[a].1 <= p.positions[b].1, "{a}->{b}: {p:?}");
        }
        assert!(p.width >= 300.0 && p.height >= 30.0 + 200.0 + 30.0);
    }

    #[test]
    fn cycles_and_disconnected_items_are_placed() {
        let sizes = vec![(50.0, 20.0); 5];
        let p = layered(&sizes, &[(0, 1), (1, 0), (2, 3), (3, 3)]);
        assert!(!overlap(&p, &sizes));
        assert_eq!(p.positions.len(), 5);
    }
}
