// Launches Debian's Chromium headless, as both browser tests need it: no sandbox (the tests
// may run as root in a container), no GPU, and nothing fetched in the background, so a page
// that asks the network for anything shows it in its own requests.
import { chromium } from "playwright-core";

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.COLONY_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}
