// Step charts on a canvas: values that change at instants and hold until the next change (a
// decision, a flow payoff). Shared by the monitor and the participant page; no dependencies.
//
//   import { drawSteps } from "/static/chart.js";
//   drawSteps(canvas, { series: [{ points: [{ t, v }, …], color }], t0, t1, cursor });

/**
 * Draw `series` (each `{points: [{t, v}] in time order, color, label?}`) as step lines.
 *
 * x runs from `t0` to `t1` (ms); each line holds its last value up to `cursor` (now, or when the
 * period stopped), where a faint vertical line is drawn when `showCursor`. y runs over `lo`–`hi`
 * when given, else over the values seen (and at least 0–1). `format(v)` labels the y axis.
 */
export function drawSteps(canvas, { series, t0, t1, cursor, showCursor = true, lo, hi, format = String }) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320;
  const height = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 34, right: 8, top: 8, bottom: 18 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;

  if (!(t1 > t0)) t1 = t0 + 1000;
  let low = lo ?? 0;
  let high = hi ?? 1;
  if (lo === undefined || hi === undefined) {
    for (const { points } of series) {
      for (const p of points) {
        if (lo === undefined) low = Math.min(low, p.v);
        if (hi === undefined) high = Math.max(high, p.v);
      }
    }
  }
  if (!(high > low)) high = low + 1;
  const x = (t) => pad.left + ((Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0)) * w;
  const y = (v) => pad.top + (1 - (v - low) / (high - low)) * h;

  const style = getComputedStyle(canvas);
  ctx.strokeStyle = style.borderColor || "#999";
  ctx.fillStyle = style.color || "#555";
  ctx.lineWidth = 1;
  ctx.font = "10px system-ui, sans-serif";
  ctx.strokeRect(pad.left, pad.top, w, h);
  ctx.fillText(format(high), 2, pad.top + 8);
  ctx.fillText(format(low), 2, pad.top + h);
  ctx.fillText("0 s", pad.left, height - 4);
  const span = `${Math.round((t1 - t0) / 1000)} s`;
  ctx.fillText(span, pad.left + w - ctx.measureText(span).width, height - 4);
  if (showCursor) {
    ctx.globalAlpha = 0.4;
    ctx.beginPath();
    ctx.moveTo(x(cursor), pad.top);
    ctx.lineTo(x(cursor), pad.top + h);
    ctx.stroke();
    ctx.globalAlpha = 1;
  }

  ctx.lineWidth = 2;
  for (const { points, color } of series) {
    if (!points.length) continue;
    ctx.strokeStyle = color;
    ctx.beginPath();
    ctx.moveTo(x(points[0].t), y(points[0].v));
    for (let i = 1; i < points.length; i += 1) {
      ctx.lineTo(x(points[i].t), y(points[i - 1].v));
      ctx.lineTo(x(points[i].t), y(points[i].v));
    }
    ctx.lineTo(x(Math.max(cursor, points[points.length - 1].t)), y(points[points.length - 1].v));
    ctx.stroke();
  }
}
