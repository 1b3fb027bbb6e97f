// The web console in headless Chromium, driven by Playwright (playwright-core,
// Debian's Chromium). Run by tests/console.rs against `headwater up --demo`:
//   ADMIN, KEY (a customer's API key), OPERATOR (the operator token),
//   UPLOAD_DIR (a packaged HLS folder), SHOTS (where screenshots go), CHROMIUM,
//   USAGE_BEFORE (demo-trial's bytes before this browser played it).
// Asks its runner to kill a node by printing `KILL <node id>` and waits for a
// line on stdin; prints `ok <check>` per check and `RESULT <json>` at the end.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";

const { ADMIN, KEY, OPERATOR, UPLOAD_DIR, SHOTS, CHROMIUM, USAGE_BEFORE } = process.env;
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const api = async (path, token = KEY) => {
  const res = await fetch(`${ADMIN}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
};
const result = {};

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 1400 } });
const requested = [];
context.on("request", (r) => requested.push(r.url()));
// Bytes of each GET answer, as this browser received them.
const received = [];
context.on("response", async (r) => {
  if (r.request().method() !== "GET") return;
  try { received.push([r.url(), (await r.body()).length]); } catch { /* aborted */ }
});
const page = await context.newPage();
let navigations = 0;
page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations += 1; });
page.setDefaultTimeout(60_000);

async function check(name, fn) {
  try {
    await fn();
    await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
    console.log(`ok ${name}`);
  } catch (e) {
    await page.screenshot({ path: `${SHOTS}/${name}-failed.png`, fullPage: true }).catch(() => {});
    console.log(`failed ${name}: ${e.stack || e}`);
    await browser.close();
    process.exit(1);
  }
}

async function signIn(p, credential) {
  await p.fill("#credential", credential);
  await p.click("#signin-form button[type=submit]");
}

await page.goto(`${ADMIN}/console`);

await check("wrong-key-shows-the-problem", async () => {
  const wrong = "hw_0000000000000000_wrongwrongwrong";
  await signIn(page, wrong);
  await page.waitForSelector("#error:not([hidden])");
  const shown = await page.textContent("#error");
  const { status, body } = await api("/v1/customers/me", wrong);
  assert.equal(status, 401);
  assert.ok(shown.includes(body.detail), `the page shows "${shown}", the API said "${body.detail}"`);
  assert.ok(await page.isVisible("#signin"), "still signed out");
  result.wrong_key_error = shown;
});

await check("customer-sees-the-demo-accounts", async () => {
  await signIn(page, KEY);
  await page.waitForSelector("#accounts tbody tr[data-account=demo-trial]");
  await page.waitForSelector("#error", { state: "hidden" });
  const { body } = await api("/v1/accounts?limit=100");
  const rows = await page.$$eval("#accounts tbody tr", (trs) => trs.map((tr) => tr.dataset.account));
  assert.deepEqual(rows, body.items.map((a) => a.name));
  const locator = await page.textContent("#accounts tbody tr[data-account=demo-trial] code");
  assert.equal(locator, body.items.find((a) => a.name === "demo-trial").locator);
  result.accounts = rows;
});

await check("customer-plays-the-locator", async () => {
  await page.click("#accounts tbody tr[data-account=demo-trial] button:not(.copy)");
  await page.waitForFunction(() => document.getElementById("play-path").value !== "");
  await page.click("#play-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("video").currentTime > 2, null, { timeout: 60_000 });
  result.played = await page.$eval("#video", (v) => v.currentTime);
  result.play_path = await page.inputValue("#play-path");
});

await check("customer-sees-hourly-usage-of-what-it-played", async () => {
  // The page's chart against the bytes this browser received from the
  // account's locator (nodes report usage every 10 s).
  const { locator } = (await api("/v1/accounts/demo-trial")).body;
  const played = received.filter(([u]) => u.startsWith(locator)).reduce((s, [, n]) => s + n, 0);
  assert.ok(played > 0);
  const near = (t) => t === Number(USAGE_BEFORE) + played;
  const deadline = Date.now() + 60_000;
  let total = 0;
  while (Date.now() < deadline) {
    total = (await api("/v1/accounts/demo-trial/usage?granularity=hour")).body.total_bytes;
    if (near(total)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.ok(near(total), `usage ${total} is not ${USAGE_BEFORE} + the ${played} bytes the player received`);
  await page.click("#accounts tbody tr[data-account=demo-trial] button:not(.copy)");
  await page.waitForFunction((t) => Number(document.getElementById("usage-hour-total").dataset.bytes) >= t, total);
  const chart = Number(await page.getAttribute("#usage-hour-total", "data-bytes"));
  assert.ok(near(chart), `the chart's ${chart} bytes are not the ${played} the player received`);
  assert.equal(await page.$$eval("#usage-hour svg rect", (r) => r.length), 24);
  assert.equal(await page.$$eval("#usage-day svg rect", (r) => r.length), 30);
  const bars = await page.$$eval("#usage-hour svg rect", (r) => r.reduce((s, x) => s + Number(x.dataset.bytes), 0));
  const shown = Number(await page.getAttribute("#usage-hour-total", "data-bytes"));
  assert.equal(bars, shown, "the bars add up to the total");
  result.player_bytes = played;
  result.usage_bytes = shown - Number(USAGE_BEFORE);
});

await check("customer-uploads-with-progress", async () => {
  await page.evaluate(() => {
    window.seenProgress = [];
    new MutationObserver(() => window.seenProgress.push(document.getElementById("upload-percent").textContent))
      .observe(document.getElementById("upload-percent"), { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#upload-asset", "from-console");
  await page.setInputFiles("#upload-folder", UPLOAD_DIR);
  await page.click("#upload-form button[type=submit]");
  await page.waitForSelector("#assets tbody tr >> text=from-console");
  const seen = await page.evaluate(() => window.seenProgress);
  assert.equal(seen[seen.length - 1], "100 %", JSON.stringify(seen));
  const pct = seen.map((s) => Number.parseInt(s, 10));
  assert.ok(pct.every((v, i) => i === 0 || v >= pct[i - 1]), `the bar only goes forward: ${seen}`);
  const { body } = await api("/v1/accounts/demo-trial/assets");
  const uploaded = body.items.find((a) => a.name === "from-console");
  assert.ok(uploaded && uploaded.files === 9, JSON.stringify(body));
  const row = await page.$$eval("#assets tbody tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.ok(row.some((r) => r[0] === "from-console" && r[1] === "9" && r[2] === String(uploaded.bytes)), JSON.stringify(row));
  result.upload_progress = seen;
});

await check("customer-changes-the-offer-live", async () => {
  const before = navigations;
  await page.evaluate(() => {
    window.seenStates = [];
    const el = document.getElementById("op-state");
    new MutationObserver(() => window.seenStates.push(el.dataset.state)).observe(el, { attributes: true });
  });
  await page.selectOption("#offer-kind", "payg");
  await page.click("#offer-form button[type=submit]");
  await page.waitForSelector("#op-state[data-state=succeeded]", { timeout: 120_000 });
  const { body } = await api("/v1/operations?account=demo-trial&kind=change_offer&limit=1");
  const op = body.items[0];
  assert.equal(op.state, "succeeded");
  const shown = await page.$$eval("#op-steps li", (lis) => lis.map((li) => li.textContent.split(" ")[0]));
  assert.deepEqual(shown, op.steps.map((s) => s.step), "every step, in order");
  const states = await page.evaluate(() => window.seenStates);
  assert.notEqual(states[0], "succeeded", `it was followed, not read when done: ${states}`);
  assert.equal(navigations, before, "no reload");
  await page.waitForFunction(() => document.querySelector("#accounts tbody tr[data-account=demo-trial]").textContent.includes("payg"));
  result.offer_steps = shown;
  result.offer_states = states;
});

await check("the-key-is-in-no-url-and-no-storage", async () => {
  const secret = KEY.split("_").pop();
  for (const u of requested) assert.ok(!u.includes(KEY) && !u.includes(secret), `the key in ${u}`);
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  assert.ok(!stored.includes(secret), "the key in storage");
  const cookies = JSON.stringify(await context.cookies());
  assert.ok(!cookies.includes(secret), "the key in a cookie");
  assert.ok(!page.url().includes(secret));
  result.requests = requested.length;
});

await check("operator-sees-a-killed-node-and-its-event", async () => {
  await page.click("#signout");
  await signIn(page, OPERATOR);
  await page.waitForSelector("#nodes tbody tr[data-state=ready]");
  await page.waitForSelector("#events li");
  const { body } = await api("/v1/accounts/demo-sla", KEY);
  const nodes = (await api("/v1/nodes", OPERATOR)).body.items.filter((n) => n.pool_id === body.pool.id && n.state === "ready");
  const victim = nodes[0].id;
  await page.waitForSelector(`#nodes tbody tr[data-node="${victim}"][data-state=ready]`);
  const newest = await page.$eval("#events li", (li) => Number(li.dataset.id));
  console.log(`KILL ${victim}`);
  await stdin.next();
  await page.waitForSelector(`#nodes tbody tr[data-node="${victim}"]:not([data-state=ready])`, { timeout: 60_000 });
  // A new event in the feed, pushed to the page: the node's failure.
  await page.waitForFunction(([subject, after]) => [...document.querySelectorAll("#events li")]
    .some((li) => Number(li.dataset.id) > after && li.dataset.subject === subject && li.dataset.action === "node.failed"),
  [`node:${victim}`, newest], { timeout: 60_000 });
  assert.equal(navigations, 1, "the page was never reloaded");
  result.killed = victim;
  result.killed_state = await page.getAttribute(`#nodes tbody tr[data-node="${victim}"]`, "data-state");
  result.events = await page.$$eval(`#events li[data-subject="node:${victim}"]`, (lis) => lis.map((li) => li.textContent));
});

await browser.close();
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
