// Drives Debian's chromium through playwright-core against a running
// `stitch view`. Called by scripts/view-browser-test.sh; fails (exit 1) on the
// first check that does not hold.
"use strict";
const { chromium } = require("playwright-core");

function args() {
  const a = {};
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) a[v[i].replace(/^--/, "")] = v[i + 1];
  return a;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

async function main() {
  const a = args();
  const browser = await chromium.launch({ executablePath: a.chromium, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    // The page must not reach for the network: only the server's own origin.
    const origin = new URL(a.url).origin;
    page.on("request", (r) => { if (!r.url().startsWith(origin)) errors.push(`external request ${r.url()}`); });

    await page.goto(a.url);
    await page.waitForSelector("body[data-first-render-ms]", { timeout: 30000 });
    const ms = Number(await page.getAttribute("body", "data-first-render-ms"));
    console.log(`${a.name}: first render ${ms} ms (navigation start to graph drawn)`);
    check(ms < 2000, `${a.name} first render under 2 s (${ms} ms)`);

    const api = (p) => page.evaluate(async (p) => (await fetch(p)).json(), p);
    const summary = await api("/api/summary");
    const shown = Number(await page.getAttribute("#node-count", "data-nodes"));
    const text = await page.textContent("#node-count");
    check(shown === summary.nodes && text.includes(String(summary.nodes)), `node count shown (${text}) equals the API's (${summary.nodes})`);
    const items = await page.locator("#viewport .item").count();
    check(items > 0 && items <= 200, `top level drawn folded (${items} items)`);

    // Expand groups until a node is drawn, then click it.
    let clicked = null;
    for (let depth = 0; depth < 6 && !clicked; depth++) {
      const node = page.locator("#viewport .item.node").first();
      if (await node.count()) {
        clicked = await node.getAttribute("data-key");
        await node.click();
        break;
      }
      const g = page.locator("#viewport .item.group:not(.open)").first();
      const key = await g.getAttribute("data-key");
      await g.click();
      await page.waitForSelector(`#viewport [data-key="${key}"].open`);
    }
    check(clicked !== null, `clicked node ${clicked}`);
    await page.waitForSelector("#inspector-name");
    const name = await page.textContent("#inspector-name");
    const op = await page.textContent("#inspector-op");
    const expected = await api(`/api/node?view=source&id=${clicked.slice(1)}`);
    check(name === expected.name && op === expected.op, `inspector shows ${op} '${name}'`);
    const outs = await page.locator("#inspector-outputs td code").count();
    check(outs === expected.outputs.length, `inspector lists ${outs} output types`);

    if (a.screenshot) {
      // A richer picture: reveal a matmul of the first layer through the search box.
      const mm = await api("/api/find?view=source&op=matmul");
      await page.fill("#search", mm.list[1].name);
      await page.waitForSelector("#search-results .row", { timeout: 5000 });
      await page.click("#search-results .row");
      await page.waitForTimeout(400);
      await page.screenshot({ path: a.screenshot });
      console.log(`  saved ${a.screenshot}`);
    }

    if (a["compiled-screenshot"]) {
      await page.waitForSelector("#tab-compiled:not([disabled])", { timeout: 300000 });
      await page.click("#tab-compiled");
      await page.waitForFunction(() => document.querySelector("#tab-compiled").classList.contains("active"));
      const s = await api("/api/summary");
      check(s.compiled.status === "ready" && s.compiled.fused > 0, `compiled view: ${s.compiled.nodes} nodes, ${s.compiled.fused} fused regions`);
      const count = Number(await page.getAttribute("#node-count", "data-nodes"));
      check(count === s.compiled.nodes, `compiled node count shown (${count})`);
      // Reveal a fused region of the first layer and expand it into its members.
      const f = await api("/api/find?view=compiled&op=fused");
      const pick = f.list.find((r) => r.name.includes("layer.0/")) || f.list[0];
      await page.evaluate(async (id) => { await revealNode(id); await toggle(`n${id}`); centerOn(`n${id}`); }, pick.id);
      await page.waitForSelector(`#viewport [data-key="m${pick.id}.0"]`);
      const members = await page.locator(`#viewport .item.member`).count();
      check(members >= 2, `fused region ${pick.name} expanded into ${members} member ops`);
      await page.screenshot({ path: a["compiled-screenshot"] });
      console.log(`  saved ${a["compiled-screenshot"]}`);
    }

    if (a["time-compiled"]) {
      // The compiled (decomposed, fused) graph: time from the click to the drawing.
      await page.waitForSelector("#tab-compiled:not([disabled])", { timeout: 300000 });
      const t = await page.evaluate(async () => {
        const t0 = performance.now();
        await switchView("compiled");
        return performance.now() - t0;
      });
      const s = await api("/api/summary");
      console.log(`${a.name}: compiled view (${s.compiled.nodes} nodes, ${s.compiled.fused} fused regions) rendered in ${t.toFixed(0)} ms`);
      check(t < 2000, `${a.name} compiled view renders under 2 s`);
      const count = Number(await page.getAttribute("#node-count", "data-nodes"));
      check(count === s.compiled.nodes, `compiled node count shown (${count})`);
      await page.evaluate(() => switchView("source"));
    }

    if (a["constant-screenshot"]) {
      await page.click('.ltab[data-panel="constants-panel"]');
      await page.waitForSelector("#constants .row");
      // The largest constant a layer uses: a quantized 2-D weight with a heat map.
      const rows = await page.$$eval("#constants .row", (els) => els.map((e) => e.textContent));
      const idx = Math.max(0, rows.findIndex((t) => t.includes("blk.0")));
      await page.locator("#constants .row").nth(idx).click();
      await page.waitForSelector("#constant-stats", { timeout: 60000 });
      const mean = await page.textContent('[data-stat="mean"]');
      check(mean.length > 0, `constant viewer shows mean ${mean}`);
      await page.screenshot({ path: a["constant-screenshot"] });
      console.log(`  saved ${a["constant-screenshot"]}`);
    }
    check(errors.length === 0, `no page errors or external requests ${errors.join("; ")}`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
