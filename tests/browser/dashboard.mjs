// Drives the covet-txn dashboard in a real headless Chromium and checks
// what a person would see, on a desktop and on a phone. Usage:
//   node dashboard.mjs <dashboard url> <bearer token> <screenshot.png> \
//        <websocket|events> <phone-screenshot.png>
// The dashboard must be serving the workload of tests/tests/dashboard.rs,
// at the root of its own address or mounted under a path ending in "/"
// (then the path without the "/" must redirect to it). The fourth argument
// is the transport the page must end up on: "events" when the server in
// front refuses WebSocket upgrades, as some proxies do.
// Exits non-zero, saying why, after running every check.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, token, screenshot, transport, phoneScreenshot] = process.argv.slice(2);
if (!base || !token || !screenshot || !["websocket", "events"].includes(transport) || !phoneScreenshot) {
  console.error("usage: node dashboard.mjs <dashboard url> <bearer token> <screenshot.png> <websocket|events> <phone.png>");
  process.exit(2);
}
// A refused upgrade is what the fallback is for: the browser reports it,
// and it is not a problem of the page.
const expectedNoise = (text) => transport === "events" && text.includes("api/ws");

const XSS_NAMES = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"];
const failures = [];
const problems = [];

function check(condition, what) {
  if (!condition) throw new Error(what);
}

async function step(name, body) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (error) {
    failures.push(name);
    console.log(`FAIL ${name}: ${error.message}`);
  }
}

function csvRows(text) {
  return text.trim().split(/\r?\n/).map((line) => line.split(","));
}

// A fresh profile for every run: nothing cached from an earlier one.
const profile = mkdtempSync(join(tmpdir(), "covet-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  acceptDownloads: true,
  hasTouch: true,
  viewport: { width: 1440, height: 900 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});

try {
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("dialog", async (dialog) => {
    problems.push(`a dialog opened: ${dialog.message()}`);
    await dialog.dismiss();
  });
  page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400 && !expectedNoise(response.url())) problems.push(`${response.url()} answered ${response.status()}`);
  });
  page.on("console", (message) => {
    if (message.type() === "error" && !expectedNoise(message.text())) problems.push(`console error: ${message.text()}`);
  });
  // What the page's updates came over.
  const socketFrames = [];
  let eventStreams = 0;
  page.on("websocket", (socket) => {
    socket.on("framereceived", (frame) => socketFrames.push(frame.payload.length));
  });
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.endsWith("/api/events")) eventStreams += 1;
  });

  await step("the page and the API refuse requests without the token", async () => {
    for (const path of ["", "api/state", "api/events", "export/report.json", "metrics"]) {
      const response = await context.request.get(new URL(path, base).toString());
      check(response.status() === 401, `${path || "/"} answered ${response.status()} without a token`);
    }
    const wrong = await context.request.get(new URL("api/state?token=wrong", base).toString());
    check(wrong.status() === 401, `a wrong token was accepted (${wrong.status()})`);
  });

  const mount = new URL(base);
  if (mount.pathname !== "/") {
    await step("the mount path without its slash redirects to the page", async () => {
      const bare = new URL(mount.pathname.replace(/\/$/, ""), mount).toString();
      const response = await context.request.get(`${bare}?level=ERROR`, { maxRedirects: 0 });
      check(response.status() === 308, `${bare} answered ${response.status()}`);
      const location = new URL(response.headers()["location"], bare).toString();
      check(location === `${base}?level=ERROR`, `redirected to ${location}`);
    });
  }

  // Opened once with the token in the address, as a person would paste it;
  // a mounted page is opened without its final slash.
  const pageUrl = mount.pathname === "/" ? new URL(base) : new URL(mount.pathname.replace(/\/$/, ""), mount);
  pageUrl.searchParams.set("token", token);
  await page.goto(pageUrl.toString());

  await step("the token leaves the address for an HttpOnly SameSite cookie", async () => {
    check(page.url() === base, `the page is at ${page.url()}, not ${base}`);
    const cookies = await context.cookies(base);
    const cookie = cookies.find((candidate) => candidate.name === "covet_txn_dashboard");
    check(cookie, `no token cookie: ${JSON.stringify(cookies.map((candidate) => candidate.name))}`);
    check(cookie.httpOnly && cookie.sameSite === "Strict", `cookie flags: ${JSON.stringify(cookie)}`);
    check(!(await page.evaluate(() => document.cookie)).includes("covet_txn_dashboard"), "a script can read the token");
  });

  await step("the page is styled by its own stylesheet", async () => {
    const rules = await page.evaluate(() =>
      [...document.styleSheets].filter((sheet) => sheet.href && sheet.href.endsWith("assets/app.css")).map((sheet) => sheet.cssRules.length),
    );
    check(rules.length === 1 && rules[0] > 10, `stylesheets: ${JSON.stringify(rules)}`);
  });

  await step(`the page goes live over ${transport === "websocket" ? "a WebSocket" : "server-sent events"}`, async () => {
    await page.waitForFunction(() => document.getElementById("connection").textContent === "live");
    const used = await page.getAttribute("#connection", "data-transport");
    check(used === transport, `the page's updates come over ${used}`);
    if (transport === "websocket") {
      await page.waitForFunction(() => document.getElementById("kpi-committed").textContent !== "—");
      check(socketFrames.length > 0, "no WebSocket frame arrived");
      check(eventStreams === 0, `the page opened ${eventStreams} event stream(s) besides its WebSocket`);
    } else {
      check(eventStreams > 0, "the page never opened the event stream");
    }
    check((await page.textContent("#manager")) === "dashboard-test", "the manager's name is not shown");
    await page.waitForFunction(() => document.getElementById("store").textContent === "history kept in sqlite");
    check((await page.textContent("#backend")) === "sqlite", "the backend is not shown");
  });

  await step("the figures change while transactions run", async () => {
    const committed = async () => Number((await page.textContent("#kpi-committed")).replace(/[^0-9]/g, ""));
    await page.waitForFunction(() => /\d/.test(document.getElementById("kpi-committed").textContent));
    const first = await committed();
    await page.waitForFunction(
      (before) => Number(document.getElementById("kpi-committed").textContent.replace(/[^0-9]/g, "")) > before,
      first,
    );
    await page.waitForFunction(() => Number(document.getElementById("kpi-throughput").textContent) > 0);
    const score = Number(await page.textContent("#health-score"));
    check(score >= 0 && score <= 100, `health score ${score}`);
  });

  await step("the charts draw the monitor's history", async () => {
    await page.waitForFunction(() =>
      ["chart-throughput", "chart-latency", "chart-conflicts", "chart-health"].every(
        (id) => document.querySelectorAll(`#${id} polyline`).length > 0,
      ),
    );
    const points = await page.getAttribute("#chart-throughput polyline", "points");
    check(points.split(" ").length >= 2, "the throughput line has fewer than two points");
  });

  await step("function names are shown as text, never run as markup", async () => {
    await page.waitForFunction(
      (names) => names.every((name) => [...document.querySelectorAll("#function-table td.name")].some((cell) => cell.textContent === name)),
      XSS_NAMES,
    );
    const scripts = await page.$$eval("script", (nodes) => nodes.map((node) => node.getAttribute("src")));
    check(scripts.length === 1 && scripts[0] === "assets/app.js", `unexpected scripts: ${JSON.stringify(scripts)}`);
    check((await page.$$("img")).length === 0, "an <img> from a function name made it into the page");
  });

  await step("a running transaction is listed with its age", async () => {
    await page.waitForFunction(() =>
      [...document.querySelectorAll("#active-table tbody tr")].some((row) => row.cells[1].textContent.endsWith("held_open")),
    );
    const age = await page.$$eval("#active-table tbody tr", (rows) =>
      rows.find((row) => row.cells[1].textContent.endsWith("held_open")).cells[6].textContent,
    );
    check(/\d+(\.\d+)? (ms|s)|min/.test(age), `age shows "${age}"`);
  });

  await step("the functions table sorts by a column", async () => {
    await page.click('#function-table th[data-key="failed"]');
    check((await page.getAttribute('#function-table th[data-key="failed"]', "aria-sort")) === "descending", "not sorted by failed");
    const first = await page.textContent("#function-table tbody tr:first-child td.name");
    check(first.endsWith("never_succeeds") || first.endsWith("too_slow"), `first row after sorting by failures is ${first}`);
  });

  await step("alerts of every level show, and the filter narrows them", async () => {
    await page.waitForFunction(() => {
      const levels = [...document.querySelectorAll("#alerts .badge")].map((badge) => badge.textContent);
      return levels.includes("WARNING") && levels.includes("ERROR");
    });
    await page.selectOption("#alert-level", "ERROR");
    await page.waitForFunction(() => {
      const levels = [...document.querySelectorAll("#alerts .badge")].map((badge) => badge.textContent);
      return levels.length > 0 && levels.every((level) => level === "ERROR" || level === "CRITICAL");
    });
    const href = await page.getAttribute("#export-alerts", "href");
    check(href.includes("level=ERROR") && !href.includes("token"), `the alerts export link is ${href}`);
  });

  await step("health recommendations are shown", async () => {
    const advice = await page.$$eval("#recommendations li", (items) => items.map((item) => item.textContent));
    check(advice.length > 0, "no recommendation");
    check(advice.some((text) => text.includes("timed out") || text.includes("gave up")), `recommendations: ${JSON.stringify(advice)}`);
  });

  const downloaded = {};
  await step("every export downloads and parses", async () => {
    for (const id of ["export-report", "export-metrics", "export-history", "export-alerts"]) {
      const [download] = await Promise.all([page.waitForEvent("download"), page.click(`#${id}`)]);
      const path = await download.path();
      downloaded[id] = { name: download.suggestedFilename(), text: readFileSync(path, "utf8") };
    }
    const report = JSON.parse(downloaded["export-report"].text);
    check(report.metrics.manager === "dashboard-test", "the report names another manager");
    check(Array.isArray(report.history) && report.history.length > 0, "the report has no history");
    check(report.alerts.some((alert) => alert.level === "WARNING"), "the report lost the WARNING alerts");
    check(downloaded["export-report"].name === "covet-txn-report.json", `report file ${downloaded["export-report"].name}`);

    const metrics = csvRows(downloaded["export-metrics"].text);
    check(metrics[0][0] === "function" && metrics.at(-1)[0] === "all", "metrics.csv has no header or no totals row");
    const history = csvRows(downloaded["export-history"].text);
    check(history.length > 2 && history[0].includes("committed"), "history.csv is empty");
    const alerts = csvRows(downloaded["export-alerts"].text);
    const level = alerts[0].indexOf("level");
    check(level >= 0 && alerts.length > 1, "alerts.csv is empty");
    check(alerts.slice(1).every((row) => row[level] === "ERROR" || row[level] === "CRITICAL"), "alerts.csv ignores the level filter");
  });

  await step("the Prometheus exposition is served", async () => {
    const response = await context.request.get(await page.$eval("#export-prometheus", (link) => link.href));
    check(response.ok(), `/metrics answered ${response.status()}`);
    check(response.headers()["content-type"].startsWith("application/openmetrics-text"), "wrong content type");
    const text = await response.text();
    check(/^covet_txn_transactions_committed_total\{[^}]*manager="dashboard-test"[^}]*\} [1-9]/m.test(text), "no committed counter for the manager");
    check(text.trimEnd().endsWith("# EOF"), "the exposition does not end with # EOF");
  });

  await step("a screenshot of the whole page is saved", async () => {
    await page.selectOption("#alert-level", "");
    await page.waitForFunction(() => document.querySelectorAll("#alerts .badge").length > 1);
    // The header is sticky: from the top, it is drawn where it belongs.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`screenshot: ${screenshot}`);
  });

  await step("on a phone (390×844), the page fits the screen and its controls can be tapped", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    // A few updates at the new size.
    await page.waitForTimeout(800);
    const layout = await page.evaluate(() => {
      const width = window.innerWidth;
      const outside = [...document.querySelectorAll(".card, .panel, header, footer")]
        .map((node) => ({ node, box: node.getBoundingClientRect() }))
        .filter(({ box }) => box.left < -0.5 || box.right > width + 0.5)
        .map(({ node, box }) => `${node.tagName.toLowerCase()}.${node.className} [${box.left}, ${box.right}]`);
      const charts = [...document.querySelectorAll("svg.plot")].map((chart) => ({
        width: chart.getBoundingClientRect().width,
        room: chart.parentElement.getBoundingClientRect().width,
      }));
      const small = [...document.querySelectorAll("#alert-level, .exports a, #function-table th")]
        .map((node) => ({ node, box: node.getBoundingClientRect() }))
        .filter(({ box }) => box.height < 44 || box.width < 24)
        .map(({ node, box }) => `${node.id || node.textContent.trim()} ${Math.round(box.width)}×${Math.round(box.height)}`);
      const table = document.querySelector("#function-table").parentElement;
      return {
        width,
        documentWidth: document.documentElement.scrollWidth,
        bodyWidth: document.body.scrollWidth,
        outside,
        charts,
        small,
        tableScrolls: table.scrollWidth > table.clientWidth && getComputedStyle(table).overflowX === "auto",
      };
    });
    check(layout.width === 390, `the viewport is ${layout.width} wide`);
    check(layout.documentWidth <= layout.width && layout.bodyWidth <= layout.width,
      `the page is ${layout.documentWidth} px wide on a ${layout.width} px screen`);
    check(layout.outside.length === 0, `panels outside the screen: ${layout.outside.join("; ")}`);
    check(layout.charts.length === 4 && layout.charts.every((chart) => chart.width <= chart.room + 0.5 && chart.width > 250),
      `charts did not resize: ${JSON.stringify(layout.charts)}`);
    check(layout.small.length === 0, `controls too small to tap: ${layout.small.join("; ")}`);
    check(layout.tableScrolls, "the functions table neither fits nor scrolls inside its card");
    // Tapping works: the level filter and a sortable header.
    await page.tap('#function-table th[data-key="committed"]');
    check((await page.getAttribute('#function-table th[data-key="committed"]', "aria-sort")) !== "none", "a tapped header did not sort");
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: phoneScreenshot, fullPage: true });
    console.log(`phone screenshot: ${phoneScreenshot}`);
  });

  await step("nothing went wrong in the page", async () => {
    check(problems.length === 0, problems.join("; "));
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

if (failures.length > 0) {
  console.error(`${failures.length} dashboard check(s) failed: ${failures.join(", ")}`);
  process.exit(1);
}
console.log("all dashboard checks passed");
