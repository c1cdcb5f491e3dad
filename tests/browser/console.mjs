// Drives Debian's Chromium (headless) against a running gateway's console, for
// tests/console_browser.rs. Arguments: the console URL, the admin token, a player to look up,
// the shard whose master the test will kill, and where to save the screenshot.
//
// Prints, one per line: "LOOKUP <version>" once the player lookup rendered; "READY" once every
// shard shows up (the test then kills the master); "DOWN <ms>" once the page shows the shard
// unreachable, <ms> after READY; then it saves the screenshot. Exits non-zero on a timeout.
import { launchChromium } from "./chromium.mjs";

const [url, token, player, shard, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
try {
  // The admin token as the password of HTTP Basic, as a person's browser would send it.
  const context = await browser.newContext({
    httpCredentials: { username: "ops", password: token },
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  const response = await page.goto(url);
  if (!response || response.status() !== 200) throw new Error("console answered " + (response && response.status()));
  await page.waitForSelector(`tr[data-shard="${shard}"][data-reachable="true"]`, { timeout: 15000 });
  await page.fill("#player-id", player);
  await page.click("button[type=submit]");
  const found = await page.waitForSelector("#player[data-version]", { timeout: 10000 });
  console.log("LOOKUP " + (await found.getAttribute("data-version")));
  console.log("READY");
  const ready = Date.now();
  await page.waitForSelector(`tr[data-shard="${shard}"][data-reachable="false"]`, { timeout: 20000 });
  console.log("DOWN " + (Date.now() - ready));
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
