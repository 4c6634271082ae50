// Small SVG charts for the admin dashboard: bars per day (stacked by series) and
// horizontal bars. Each chart is an <svg role="img"> with a one-sentence summary as its
// name, a <title> tooltip on every bar, and the numbers in a table under "Show data".
// Charts are drawn at the container's width and redrawn when the window is resized.

import { fill, fmtInt, h } from "./common.js";

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 220;

// 3:1 or better against white (WCAG non-text contrast), and told apart by the legend.
export const PALETTE = ["#0b5cad", "#c2410c", "#1a7f37", "#8250df", "#a0115b", "#0f766e",
  "#7d5100", "#57606a"];

const shortDay = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric",
  timeZone: "UTC" });
export const fmtDay = (iso) => shortDay.format(new Date(`${iso}T00:00:00Z`));

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** A step of 1, 2 or 5 × 10^k so that about four gridlines cover `max` (integers only). */
function scale(max) {
  const raw = Math.max(max / 4, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return { step, top: Math.max(Math.ceil(max / step), 1) * step };
}

function compact(n) {
  return n >= 10000 ? `${fmtInt(Math.round(n / 1000))}k` : fmtInt(n);
}

const charts = new Set();
let resizeTimer = 0;
window.addEventListener("resize", () => {
  window.clearTimeout(resizeTimer);
  resizeTimer = window.setTimeout(() => charts.forEach((draw) => draw()), 150);
});

function mount(figure, summary, draw, table, legend) {
  const canvas = figure.querySelector(".chart-canvas");
  charts.delete(figure.redraw);
  figure.redraw = () => {
    const width = Math.max(canvas.clientWidth, 260);
    const chart = draw(width);
    chart.setAttribute("role", "img");
    chart.setAttribute("aria-label", summary);
    fill(canvas, chart);
  };
  charts.add(figure.redraw);
  figure.querySelectorAll(".legend, details.data-table").forEach((node) => node.remove());
  if (legend) figure.append(legend);
  figure.append(h("details", { class: "data-table" }, h("summary", {}, "Show data"),
    h("div", { class: "table-wrap" }, table)));
  figure.redraw();
}

function dataTable(head, rows) {
  return h("table", { class: "data" },
    h("thead", {}, h("tr", {}, head.map((name, i) => h("th", {
      scope: "col", class: i ? "num" : undefined }, name)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((value, i) => (i
      ? h("td", { class: "num" }, fmtInt(value)) : h("th", { scope: "row" }, value)))))));
}

/**
 * Bars per day. `series` is [{name, color, values}], values aligned with `days`
 * ("YYYY-MM-DD"); several series stack. `unit` names what is counted ("repairs").
 */
export function dayBars(figure, { days, series, unit, what }) {
  const totals = days.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const total = totals.reduce((a, b) => a + b, 0);
  const peak = Math.max(0, ...totals);
  const busiest = totals.indexOf(peak);
  const summary = total
    ? `${what}: ${fmtInt(total)} ${unit} over ${days.length} days; the most on ` +
      `${fmtDay(days[busiest])} (${fmtInt(peak)}).`
    : `${what}: none in the last ${days.length} days.`;

  const draw = (width) => {
    const { step, top } = scale(peak);
    const left = 12 + compact(top).length * 7.5;
    const plot = { x: left, y: 10, w: width - left - 6, h: HEIGHT - 10 - 26 };
    const y = (v) => plot.y + plot.h - (v / top) * plot.h;
    const band = plot.w / days.length;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT });
    for (let v = 0; v <= top; v += step) {
      chart.append(svg("line", { class: "grid", x1: plot.x, x2: plot.x + plot.w, y1: y(v),
        y2: y(v) }));
      chart.append(svg("text", { x: plot.x - 6, y: y(v) + 4, "text-anchor": "end" },
        compact(v)));
    }
    const every = Math.max(1, Math.ceil(days.length / Math.max(1, Math.floor(plot.w / 56))));
    days.forEach((day, i) => {
      const x = plot.x + i * band;
      let base = 0;
      for (const s of series) {
        const value = s.values[i];
        if (value > 0) {
          const height = Math.max(y(base) - y(base + value), 1);
          chart.append(svg("rect", {
            class: "bar", x: x + band * 0.15, y: y(base) - height, width: Math.max(band * 0.7, 1),
            height, fill: s.color, "data-day": day, "data-series": s.name, "data-value": value,
          }, svg("title", {}, `${fmtDay(day)}${series.length > 1 ? ` · ${s.name}` : ""}: ` +
            `${fmtInt(value)} ${unit}`)));
        }
        base += value;
      }
      if ((days.length - 1 - i) % every === 0) {
        chart.append(svg("text", { x: x + band / 2, y: HEIGHT - 8, "text-anchor": "middle" },
          fmtDay(day)));
      }
    });
    chart.append(svg("line", { class: "axis", x1: plot.x, x2: plot.x + plot.w,
      y1: plot.y + plot.h, y2: plot.y + plot.h }));
    if (!total) {
      chart.append(svg("text", { x: plot.x + plot.w / 2, y: plot.y + plot.h / 2,
        "text-anchor": "middle", class: "value" }, `No ${unit} in this period`));
    }
    return chart;
  };

  const head = ["Day", ...series.map((s) => s.name)];
  const rows = days.map((day, i) => [fmtDay(day), ...series.map((s) => s.values[i])])
    .filter((row) => row.slice(1).some((v) => v > 0));
  const legend = series.length > 1
    ? h("ul", { class: "legend", "aria-hidden": "true" }, series.map((s) => h("li", {},
      h("span", { class: `swatch swatch-${PALETTE.indexOf(s.color)}` }), s.name)))
    : null;
  mount(figure, summary, draw, rows.length ? dataTable(head, rows)
    : h("p", { class: "muted" }, "No data."), legend);
}

/** Horizontal bars: [{label, value, color}], one row each. */
export function hBars(figure, { items, unit, what }) {
  const total = items.reduce((sum, item) => sum + item.value, 0);
  const summary = `${what}: ` + items.map((item) => `${fmtInt(item.value)} ${item.label}`)
    .join(", ") + ".";
  const row = 30;
  const draw = (width) => {
    const height = items.length * row + 8;
    const labelWidth = 100;
    const valueWidth = 8 + compact(Math.max(0, ...items.map((i) => i.value))).length * 8;
    const barSpace = width - labelWidth - valueWidth - 8;
    const max = Math.max(1, ...items.map((item) => item.value));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height });
    items.forEach((item, i) => {
      const y = 4 + i * row;
      const length = item.value ? Math.max((item.value / max) * barSpace, 2) : 0;
      chart.append(svg("text", { x: labelWidth - 8, y: y + 18, "text-anchor": "end" },
        item.label));
      chart.append(svg("rect", { x: labelWidth, y: y + 4, width: barSpace, height: row - 10,
        rx: 3, fill: "#eef1f4" }));
      if (length) {
        chart.append(svg("rect", { class: "bar", x: labelWidth, y: y + 4, width: length,
          height: row - 10, rx: 3, fill: item.color, "data-series": item.label,
          "data-value": item.value },
        svg("title", {}, `${item.label}: ${fmtInt(item.value)} ${unit}`)));
      }
      chart.append(svg("text", { x: labelWidth + length + 6, y: y + 18, class: "value" },
        compact(item.value)));
    });
    return chart;
  };
  mount(figure, total ? summary : `${what}: none yet.`, draw,
    dataTable(["Outcome", "Events"], items.map((item) => [item.label, item.value])));
}
