// Opens a load-test report (report.html, an offline file) in Debian's Chromium (headless) for
// loadtest/tests/report_browser.rs. Arguments: the report's path, where to save the
// screenshot. Prints one JSON line with what the page shows: the charts, the lines of each,
// their axis labels, the shaded fault windows, and the verdict.
import { launchChromium } from "./chromium.mjs";
import { pathToFileURL } from "node:url";

const [report, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(pathToFileURL(report).href);
  const seen = await page.evaluate(() => {
    const charts = {};
    for (const figure of document.querySelectorAll("figure[data-chart]")) {
      const svg = figure.querySelector("svg");
      const box = svg.getBoundingClientRect();
      charts[figure.dataset.chart] = {
        series: [...figure.querySelectorAll("path[data-series]")]
          .filter((p) => p.getAttribute("d").trim().length > 0 && p.getTotalLength() > 0)
          .map((p) => p.dataset.series),
        xAxis: figure.querySelector("[data-axis=x]")?.textContent,
        yAxis: figure.querySelector("[data-axis=y]")?.textContent,
        faults: figure.querySelectorAll("rect[data-fault]").length,
        rendered: box.width > 0 && box.height > 0,
      };
    }
    return {
      charts,
      verdict: document.querySelector("[data-verdict]")?.dataset.verdict,
      summary: document.querySelectorAll("[data-summary] .card").length,
    };
  });
  seen.external = requests.filter((u) => !u.startsWith("file:")).length;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
