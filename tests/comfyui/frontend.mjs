// Drive ComfyUI's real frontend in headless Chromium (playwright-core): load every shipped workflow from the
// template route, check that no node type is missing, queue the ones marked "+", and open the template browser.
// Usage: node frontend.mjs URL PACK_DIR_NAME OUT_DIR [+]WORKFLOW_NAME...   (prints one JSON line)
import { chromium } from "playwright-core";

const [url, pack, outDir, ...args] = process.argv.slice(2);
// "+NAME": load and run the workflow; "NAME": load it only (the API tests run every workflow already)
const names = args.map((a) => a.replace(/^\+/, ""));
const toRun = new Set(args.filter((a) => a.startsWith("+")).map((a) => a.slice(1)));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
await page.goto(url, { waitUntil: "domcontentloaded" });
await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
await page.waitForTimeout(2000);
await page.keyboard.press("Escape"); // the first-visit template dialog

const result = { workflows: {}, templates: null, consoleErrors };
for (const name of names) {
  const wf = await (await fetch(`${url}/api/workflow_templates/${pack}/${encodeURIComponent(name)}.json`)).json();
  const before = Object.keys(await (await fetch(`${url}/history`)).json());
  const shrink = !name.endsWith("(demo models)"); // the demo variants run as shipped (their own size)
  const info = await page.evaluate(async ([wf, shrink, run]) => {
    await window.app.loadGraphData(wf);
    const registered = window.LiteGraph.registered_node_types;
    const types = wf.nodes.map((n) => n.type);
    const missing = [...new Set(types.filter((t) => !(t in registered)))];
    for (const node of window.app.graph.nodes ?? window.app.graph._nodes) {
      if (shrink && node.type === "PCDMsEncodeSource") {
        for (const w of node.widgets) if (w.name === "width" || w.name === "height") w.value = 128;
      }
    }
    if (run) await window.app.queuePrompt(0, 1);
    return { missing, loadedNodes: (window.app.graph.nodes ?? window.app.graph._nodes).length };
  }, [wf, shrink, toRun.has(name)]);
  await page.keyboard.press("Escape");
  // wait for the queued prompt to finish, then take the picture (its previews show the results)
  let status = toRun.has(name) ? null : "loaded";
  for (let i = 0; i < 1200 && status === null; i++) {
    await page.waitForTimeout(250);
    const hist = await (await fetch(`${url}/history`)).json();
    for (const [id, entry] of Object.entries(hist)) {
      if (!before.includes(id) && entry.status && entry.status.completed !== undefined) status = entry.status.status_str;
    }
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: `${outDir}/${name}.png` });
  result.workflows[name] = { ...info, status };
}

result.templates = await (await fetch(`${url}/workflow_templates`)).json();
await page.evaluate(async () => {
  await window.app.extensionManager.command.execute("Comfy.BrowseTemplates");
});
await page.waitForTimeout(2500);
const text = await page.evaluate(() => document.body.innerText);
result.templateDialogMentionsPack = text.includes(pack);
const packLink = page.getByText(pack, { exact: false }).first();
if (await packLink.count()) {
  await packLink.click().catch(() => {});
  await page.waitForTimeout(1500);
}
const textAfter = await page.evaluate(() => document.body.innerText);
result.templateDialogShowsWorkflows = names.filter((n) => textAfter.includes(n));
await page.screenshot({ path: `${outDir}/template_browser.png` });
await browser.close();
console.log(JSON.stringify(result));
