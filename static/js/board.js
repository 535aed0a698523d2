/* Wallboard clock (browser's local time). Live tiles are refreshed by live.js. */
(function () {
  "use strict";
  function tick() {
    var el = document.getElementById("board-clock");
    if (!el) return;
    var now = new Date();
    el.textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    el.setAttribute("datetime", now.toISOString());
  }
  tick();
  setInterval(tick, 1000);
})();
