// Used by bench/ui_report_first.py: node ui_report_first.js URL SHOT opens a Prefect flow run page, clicks its
// Artifacts tab and prints the tab's text (artifact cards in page order); saves a screenshot at SHOT.
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  await page.goto(process.argv[2], { waitUntil: 'networkidle' });
  await page.getByRole('tab', { name: 'Artifacts' }).click().catch(async () => { await page.getByText('Artifacts', { exact: true }).first().click(); });
  await page.waitForTimeout(3000);
  const text = await page.locator('.flow-run-artifacts').innerText();
  console.log(JSON.stringify(text));
  await page.screenshot({ path: process.argv[3], fullPage: false });
  await browser.close();
})().catch(e => { console.error(String(e)); process.exit(1); });
