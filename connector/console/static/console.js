// The console's little behaviour: times in UTC, pages that refresh while something is
// still moving, and the auditor's verify buttons. No inline scripts (the CSP forbids them).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const cell of document.querySelectorAll(".time[data-ms]")) {
    const ms = Number(cell.dataset.ms);
    if (ms) cell.textContent = new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  // A holding's delete-after countdown, as app.countdown words it, ticking on.
  const countdowns = document.querySelectorAll(".countdown[data-deadline-ms]");
  const tick = () => {
    for (const cell of countdowns) {
      const left = Number(cell.dataset.deadlineMs) - Date.now();
      const minutes = Math.floor(left / 60000);
      const [d, h, m] = [Math.floor(minutes / 1440), Math.floor(minutes / 60) % 24, minutes % 60];
      cell.classList.toggle("bad", left <= 0);
      cell.textContent = left <= 0 ? "已到期 / due now"
        : d ? `还剩 ${d} 天 ${h} 小时 / ${d} d ${h} h left`
        : `还剩 ${h} 小时 ${m} 分 / ${h} h ${m} min left`;
    }
  };
  if (countdowns.length) setInterval(tick, 1000);

  const live = document.querySelector("[data-refresh]");
  if (live) setTimeout(() => location.reload(), Number(live.dataset.refresh) * 1000);

  const panel = document.getElementById("verify-panel");
  if (!panel) return;
  const verdict = document.getElementById("verdict");
  const shown = document.getElementById("verified-entry");
  for (const button of document.querySelectorAll("button.verify")) {
    button.addEventListener("click", async () => {
      const query = new URLSearchParams({ connector: panel.dataset.connector, index: button.dataset.index });
      const extra = new URLSearchParams(location.search).get("tamper");
      if (extra) query.set("tamper", extra);
      verdict.dataset.state = "working";
      verdict.textContent = `正在验证 / verifying entry ${button.dataset.index} …`;
      shown.textContent = "";
      try {
        const response = await fetch(`/api/evidence?${query}`, { credentials: "same-origin" });
        const evidence = await response.json();
        if (!response.ok) throw new Error(evidence.error || `HTTP ${response.status}`);
        const result = await window.tdsVerify.verifyEntry(evidence);
        verdict.dataset.state = "verified";
        verdict.textContent = `✓ 已在您的浏览器中验证 / verified in your browser: entry ${evidence.index} is in the log of ${result.size} entries that ${evidence.origin} signed`;
        shown.textContent = result.body;
      } catch (err) {
        verdict.dataset.state = "failed";
        verdict.textContent = `✗ 验证失败 / verification failed: ${err.message}`;
      }
    });
  }
});
