// Page chrome for every page: animations pause in hidden tabs, and the main navigation on
// narrow screens is a "Menu" button that opens and closes the links (docs/dashboard.md,
// "Mobile"). Without JavaScript the links wrap onto several rows instead.
(function () {
  "use strict";
  // Animations (the "live" ring, running tiles) pause while the tab is hidden: an idle
  // wallboard tab must not keep the main thread busy (docs/dashboard.md).
  function markHidden() {
    document.documentElement.classList.toggle("page-hidden", document.visibilityState === "hidden");
  }
  document.addEventListener("visibilitychange", markHidden);
  markHidden();

  var nav = document.querySelector("nav.nav");
  var button = nav && nav.querySelector("#nav-menu-button");
  var links = nav && nav.querySelector("#nav-links");
  if (!button || !links) return;
  nav.classList.add("nav-collapsible");
  button.hidden = false;
  function set(open) {
    nav.classList.toggle("nav-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
  }
  set(false);
  button.addEventListener("click", function () {
    set(button.getAttribute("aria-expanded") !== "true");
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && nav.classList.contains("nav-open")) {
      set(false);
      button.focus();
    }
  });
})();
