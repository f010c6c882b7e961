// Saves screenshots of a running dashboard, for the README: on a desktop
// (1440×900) and, given a second file, on a phone (390×844):
//   cargo run --example dashboard &
//   node screenshot.mjs http://127.0.0.1:7777/ ../../docs/dashboard.png ../../docs/dashboard-phone.png

import { chromium } from "playwright-core";

const [url, path, phonePath] = process.argv.slice(2);
if (!url || !path) {
  console.error("usage: node screenshot.mjs <dashboard url> <file.png> [<phone.png>]");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  await page.goto(url);
  await page.waitForFunction(
    () => document.querySelectorAll("#chart-throughput polyline").length > 0 && /\d/.test(document.getElementById("kpi-throughput").textContent),
    null,
    { timeout: 60000 },
  );
  // The header is sticky: from the top, it is drawn where it belongs.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path, fullPage: true });
  console.log(`saved ${path}`);
  if (phonePath) {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1500);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: phonePath, fullPage: true });
    console.log(`saved ${phonePath}`);
  }
} finally {
  await browser.close();
}
