// SVG charts drawn by our own code: stacked bars over days, and horizontal bars per
// row. Each bar group is a list item with a label a screen reader reads (and a <title>
// shown on hover); colours come from CSS classes (series-0…, app.css), so both themes
// and forced colours apply.

import { svg } from './dom.js';
import { dayLabel, niceScale, OTHER } from './usage-data.js';

const FONT = 12;

/** The CSS class of series `i` (OTHER gets its own grey). */
export function seriesClass(key, i) {
  return key === OTHER ? 'series-other' : `series-${i % 8}`;
}

/**
 * Stacked bars, one per day: `stack` from stackByDay(). `format(v)` writes a value;
 * `describe(row)` what a day's bar says. Returns the <svg>.
 */
export function stackedBarChart(stack, { width, height = 220, format, describe, label, testid }) {
  const left = 52;
  const right = 8;
  const top = 10;
  const bottom = 26;
  const plotW = Math.max(40, width - left - right);
  const plotH = Math.max(40, height - top - bottom);
  const scale = niceScale(stack.max);
  const y = (v) => top + plotH - (v / scale.max) * plotH;
  const n = stack.rows.length || 1;
  const slot = plotW / n;
  const barW = Math.max(2, Math.min(36, slot * 0.72));
  // Day labels that fit: every k-th day, counted back from the last (today).
  const every = Math.max(1, Math.ceil((n * 44) / plotW));

  const axis = scale.ticks.map((t) => svg('g', { class: 'chart-tick', 'aria-hidden': 'true' },
    svg('line', { x1: left, x2: left + plotW, y1: y(t), y2: y(t) }),
    svg('text', { x: left - 6, y: y(t) + 4, 'text-anchor': 'end' }, format(t))));

  const bars = stack.rows.map((row, d) => {
    const cx = left + slot * d + slot / 2;
    let acc = 0;
    const rects = [];
    row.values.forEach((v, i) => {
      if (!(v > 0)) return;
      const y1 = y(acc + v);
      const y0 = y(acc);
      acc += v;
      rects.push(svg('rect', {
        class: `chart-bar ${seriesClass(stack.series[i], i)}`,
        'data-series': stack.series[i],
        'data-value': v,
        x: (cx - barW / 2).toFixed(1),
        y: y1.toFixed(1),
        width: barW.toFixed(1),
        height: Math.max(0.5, y0 - y1).toFixed(1),
      }));
    });
    const said = describe(row);
    const showLabel = (n - 1 - d) % every === 0;
    return svg('g', { class: 'chart-day', role: 'listitem', 'aria-label': said, 'data-testid': `${testid}-day-${row.day}`, 'data-total': row.total },
      svg('title', {}, said),
      // A full-height hit area, so a hover anywhere over the day shows its title.
      svg('rect', { class: 'chart-hit', x: (left + slot * d).toFixed(1), y: top, width: slot.toFixed(1), height: plotH }),
      ...rects,
      showLabel ? svg('text', { class: 'chart-xlabel', x: cx.toFixed(1), y: top + plotH + 16, 'text-anchor': 'middle', 'aria-hidden': 'true' }, dayLabel(row.day)) : null);
  });

  return svg('svg', {
    class: 'chart-svg', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'list', 'aria-label': label, 'data-testid': testid,
  }, ...axis, svg('line', { class: 'chart-axis', x1: left, x2: left + plotW, y1: y(0), y2: y(0), 'aria-hidden': 'true' }), ...bars);
}

/**
 * Horizontal bars, one row per item: `rows` of `{ key, label, bars: [{ value, cls }],
 * text, said }`, drawn against 0…`max` (`ticks` optional). Returns the <svg>.
 */
export function horizontalBarChart(rows, { width, max, ticks = null, format = String, label, testid }) {
  const narrow = width < 560;
  const labelW = narrow ? Math.min(110, Math.round(width * 0.32)) : 150;
  const textW = narrow ? 96 : 150;
  const rowH = 26;
  const top = ticks ? 18 : 4;
  const plotW = Math.max(40, width - labelW - textW - 8);
  const height = top + rows.length * rowH + 4;
  const x = (v) => labelW + Math.max(0, Math.min(1, v / (max || 1))) * plotW;
  const maxChars = Math.max(6, Math.floor((labelW - 8) / (FONT * 0.56)));

  // Tick labels at least 52 px apart: every k-th tick.
  const spacing = ticks && ticks.length > 1 ? plotW / (ticks.length - 1) : plotW;
  const every = Math.max(1, Math.ceil(52 / spacing));
  const axis = (ticks || []).filter((_, i) => i % every === 0).map((t) => svg('g', { class: 'chart-tick', 'aria-hidden': 'true' },
    svg('line', { x1: x(t), x2: x(t), y1: top - 4, y2: height - 2 }),
    svg('text', { x: x(t), y: top - 7, 'text-anchor': 'middle' }, format(t))));

  const items = rows.map((row, i) => {
    const yMid = top + i * rowH + rowH / 2;
    const name = row.label.length > maxChars ? `${row.label.slice(0, maxChars - 1)}…` : row.label;
    const bars = row.bars.map((b) => svg('rect', {
      class: `chart-bar ${b.cls}`,
      'data-value': b.value,
      x: labelW,
      y: (yMid - (b.thin ? 4 : 7)).toFixed(1),
      width: Math.max(b.value > 0 ? 2 : 0, x(b.value) - labelW).toFixed(1),
      height: b.thin ? 8 : 14,
      rx: 2,
    }));
    return svg('g', { class: 'chart-row', role: 'listitem', 'aria-label': row.said, 'data-testid': `${testid}-${row.key}` },
      svg('title', {}, row.said),
      svg('text', { class: 'chart-label', x: 4, y: yMid + 4 }, name),
      ...bars,
      svg('text', { class: 'chart-value', x: labelW + plotW + 6, y: yMid + 4 }, row.text));
  });

  return svg('svg', {
    class: 'chart-svg', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'list', 'aria-label': label, 'data-testid': testid,
  }, ...axis, ...items);
}
