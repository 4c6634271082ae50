"""What every page state is checked for, and its screenshots.

`assert_accessible` runs in the page: every form control has an accessible name, every
image an `alt`, ids are unique, visible text meets WCAG AA contrast (4.5:1, or 3:1 for large
text) against its composited background, and nothing overflows the viewport sideways.
`shoot` saves the page at 1280 px and at 360 px to `artifacts/screenshots/` and runs the
checks at both widths (`scripts/screenshots` copies the chosen ones to `docs/screenshots/`).
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page

from tests.pages.conftest import DESKTOP, NARROW, SCREENSHOTS

AUDIT = r"""
() => {
  const problems = [];
  const parse = (text) => {
    const m = /rgba?\(([^)]+)\)/.exec(text || "");
    if (!m) return null;
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1 });
  const luminance = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0) layers.push(c);
      if (c && c.a === 1) break;
    }
    const white = { r: 255, g: 255, b: 255, a: 1 };
    return layers.reverse().reduce((acc, layer) => over(layer, acc), white);
  };
  const visible = (el) => {
    if (!el.getClientRects().length) return false;
    for (let n = el; n; n = n.parentElement) {
      const s = getComputedStyle(n);
      if (s.visibility === "hidden" || s.display === "none") return false;
      if (Number(s.opacity) === 0 || s.clipPath === "inset(50%)") return false;
      if (s.position === "absolute" && n.offsetWidth <= 1) return false;
    }
    return true;
  };
  const describe = (el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}` +
    ` "${(el.textContent || "").trim().slice(0, 40)}"`;

  // controls have names
  for (const el of document.querySelectorAll("input, select, textarea, button")) {
    if (el.type === "hidden" || !visible(el)) continue;
    const named = (el.labels && el.labels.length) || el.getAttribute("aria-label") ||
      el.getAttribute("aria-labelledby") || el.title ||
      (el.tagName === "BUTTON" && el.textContent.trim());
    if (!named) problems.push(`no accessible name: ${describe(el)}`);
  }
  for (const el of document.querySelectorAll("img")) {
    if (!el.hasAttribute("alt")) problems.push(`image without alt: ${el.src}`);
  }
  for (const el of document.querySelectorAll("svg[role=img]")) {
    if (!el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby")) {
      problems.push("svg role=img without a name");
    }
  }
  const ids = new Set();
  for (const el of document.querySelectorAll("[id]")) {
    if (ids.has(el.id)) problems.push(`duplicate id ${el.id}`);
    ids.add(el.id);
  }
  // text contrast
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || seen.has(el)) continue;
    seen.add(el);
    if (!visible(el) || el.closest(":disabled, [aria-disabled=true], title, option")) continue;
    const style = getComputedStyle(el);
    const isSvg = el instanceof SVGElement;
    const fg = parse(isSvg ? style.fill : style.color);
    if (!fg || fg.a === 0) continue;
    const bg = background(isSvg ? el.closest("svg").parentElement : el);
    const [a, b] = [luminance(over(fg, bg)), luminance(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)} < ${large ? 3 : 4.5}: ${describe(el)}`);
    }
  }
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > width) {
    const wide = document.documentElement.scrollWidth;
    problems.push(`page is ${wide}px wide in a ${width}px viewport`);
  }
  return problems;
}
"""


def assert_accessible(page: Page) -> None:
    problems: list[str] = page.evaluate(AUDIT)
    assert problems == [], f"{page.url}: {problems}"


def shoot(page: Page, name: str, *, part: Locator | None = None,
          full_page: bool = True) -> list[Path]:
    """Screenshots at 1280 px and 360 px wide, each state checked first: the whole page,
    only the first screen (`full_page=False`), or one element (`part`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert re.fullmatch(r"[a-z0-9-]+", name), name
    saved = []
    for label, size in (("desktop", DESKTOP), ("360", NARROW)):
        page.set_viewport_size(size)
        page.evaluate("window.scrollTo(0, 0)")  # sticky headers stay on top in the picture
        page.wait_for_timeout(250)  # charts redraw after a resize (debounced)
        assert_accessible(page)
        path = SCREENSHOTS / f"{name}-{label}.png"
        if part is not None:
            part.screenshot(path=path, animations="disabled")
        else:
            page.screenshot(path=path, full_page=full_page, animations="disabled")
        saved.append(path)
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(250)
    return saved


SPOKEN = """cells => cells.map(cell => {
  const words = [];
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.trim();
    if (text && !walker.currentNode.parentElement.closest("[aria-hidden=true]")) words.push(text);
  }
  return words.join(" ");
})"""


def spoken(row: Locator) -> list[str]:
    """Each cell's text as a screen reader gets it: the `aria-hidden` arrow of "100 → 5,000"
    left out, the visually hidden "to" read instead, words of separate elements spaced."""
    cells: list[str] = row.locator("td").evaluate_all(SPOKEN)
    return cells
