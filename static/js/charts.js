/* Charts of the overview (Chart.js 4, vendored). Data comes from json_script blocks named by
 * the canvas's data-source; charts are (re)built on load and after htmx swaps the metrics. */
(function () {
  "use strict";

  function token(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function build(canvas) {
    var source = document.getElementById(canvas.dataset.source);
    if (!source || !window.Chart || canvas.dataset.built) return;
    canvas.dataset.built = "1";
    var data = JSON.parse(source.textContent);
    var previous = window.Chart.getChart(canvas);
    if (previous) previous.destroy();
    var still = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels.map(function (day) {
          return day.slice(5);
        }),
        datasets: [
          { label: "Succeeded", data: data.succeeded, backgroundColor: token("--ok", "#1a7f37"), stack: "d" },
          { label: "Failed", data: data.failed, backgroundColor: token("--bad", "#c62828"), stack: "d" },
        ],
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: still ? false : { duration: 300 },
        scales: {
          x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 8 } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function init(root) {
    (root || document).querySelectorAll("canvas[data-chart][data-source]").forEach(build);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { init(); });
  else init();
  // A swapped-in metrics partial brings a new canvas; existing charts are left alone.
  document.addEventListener("htmx:afterSettle", function () {
    init();
  });
})();
