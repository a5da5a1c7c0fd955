// Conveyor dashboard: live overview charts over SSE (our own SVG), confirm buttons.
// No inline script anywhere: handlers are attached here (the CSP forbids inline code).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 600, H = 160, PAD = 4;
  var COLORS = ["#2b7a3d", "#b3261e", "#1f5fa8", "#8a5a00", "#6b3fa0", "#00707a"];

  function clear(svg) { while (svg.firstChild) { svg.removeChild(svg.firstChild); } }

  // series: list of {name, points: [[x, y], ...]}; returns the number of points drawn.
  function draw(svg, series) {
    if (!svg) { return; }
    clear(svg);
    var xs = [], ys = [0], n = 0;
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    var x0 = Math.min.apply(null, xs.length ? xs : [0]), x1 = Math.max.apply(null, xs.length ? xs : [1]);
    var y1 = Math.max.apply(null, ys) || 1;
    var sx = function (x) { return x1 === x0 ? W / 2 : PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD); };
    var sy = function (y) { return H - PAD - y / y1 * (H - 2 * PAD); };
    series.forEach(function (s, i) {
      var line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", s.points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", COLORS[i % COLORS.length]);
      line.setAttribute("stroke-width", "2");
      var title = document.createElementNS(SVG, "title");
      title.textContent = s.name;
      line.appendChild(title);
      svg.appendChild(line);
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", String(PAD + 2));
      label.setAttribute("y", String(14 + 14 * i));
      label.setAttribute("fill", COLORS[i % COLORS.length]);
      label.setAttribute("font-size", "12");
      label.textContent = s.name;
      svg.appendChild(label);
      n = Math.max(n, s.points.length);
    });
    var top = document.createElementNS(SVG, "text");
    top.setAttribute("x", String(W - PAD));
    top.setAttribute("y", "12");
    top.setAttribute("text-anchor", "end");
    top.setAttribute("font-size", "11");
    top.textContent = "max " + (Math.round(y1 * 1000) / 1000);
    svg.appendChild(top);
    svg.setAttribute("data-points", String(n));
  }

  function column(points, i) { return points.map(function (p) { return [p[0], p[i]]; }); }

  function setText(id, value) { var el = document.getElementById(id); if (el) { el.textContent = String(value); } }

  function banner(message) {
    var el = document.getElementById("outage");
    if (message === null) { if (el) { el.parentNode.removeChild(el); } return; }
    if (!el) {
      el = document.createElement("div");
      el.id = "outage";
      el.className = "outage";
      var main = document.getElementById("page");
      main.parentNode.insertBefore(el, main);
    }
    el.textContent = "Store unavailable: " + message;
  }

  function update(data) {
    banner(null);
    Object.keys(data.totals).forEach(function (state) { setText("total-" + state, data.totals[state]); });
    setText("workers-online", data.workers);
    draw(document.getElementById("chart-throughput"), [
      { name: "completed", points: column(data.throughput, 1) },
      { name: "failed", points: column(data.throughput, 2) }
    ]);
    draw(document.getElementById("chart-latency"), [
      { name: "p50", points: column(data.latency, 1) },
      { name: "p95", points: column(data.latency, 2) }
    ]);
    draw(document.getElementById("chart-depth"), data.depth.queues.map(function (q, i) {
      return { name: q, points: column(data.depth.points, i + 1) };
    }));
  }

  function live(main) {
    if (!window.EventSource) { return; }
    var source = new EventSource(main.getAttribute("data-events"));
    source.addEventListener("update", function (e) { update(JSON.parse(e.data)); });
    source.addEventListener("outage", function (e) { banner(JSON.parse(e.data).error); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.getElementById("page");
    if (main && main.getAttribute("data-page") === "overview") { live(main); }
    document.querySelectorAll("[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (e) {
        if (!window.confirm(button.getAttribute("data-confirm"))) { e.preventDefault(); }
      });
    });
    var flash = document.getElementById("flash");
    if (flash && !flash.textContent.trim()) { flash.classList.add("empty"); }
  });
}());
