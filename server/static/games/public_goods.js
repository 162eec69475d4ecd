// The public goods game's view: a contribution slider and the group's contributions, live, as
// bars and as a chart over the period (CONTRACT §5).

import { drawSteps } from "/static/chart.js";
import { decisionSlider, h, sliderChartHooks } from "/static/games/generic.js";

const MAX_POINTS = 4000;

export function createView(game) {
  const endowment = Number(game.config.endowment);
  const mpcr = Number(game.config.mpcr);
  const step = endowment >= 100 ? 1 : endowment / 100;
  const others = game.members.filter((c) => c !== game.me);
  const order = [game.me, ...others];

  const slider = h("input", {
    id: "contribution", type: "range", min: "0", max: String(endowment), step: String(step), value: "0",
    "aria-describedby": "contribution-help",
  });
  const output = h("output", { for: "contribution", id: "contribution-value" }, "0");
  const control = decisionSlider(game, slider, output, format);

  const bars = new Map();
  const barList = h("ul", { class: "bars", "aria-label": "Your group's contributions" });
  for (const code of order) {
    const fill = h("span", { class: "fill", style: `background:${game.color(code)}` });
    const value = h("span", { class: "amount" }, "0");
    const item = h("li", { "data-member": code },
      h("span", { class: "who" }, game.label(code)), h("span", { class: "track" }, fill), value);
    bars.set(code, { fill, value });
    barList.append(item);
  }
  const total = h("p", { class: "total" });
  const chart = h("canvas", { class: "chart", role: "img", "data-points": "0", "aria-label": "Contributions over the period" });
  const series = new Map(order.map((c) => [c, []]));

  game.root.append(
    h("div", { class: "columns" },
      h("div", { class: "controls" },
        h("p", { class: "role" }, `You have ${format(endowment)} points each moment. What you put into the group's account is multiplied by ${format(mpcr)} and paid to every member; what you keep is yours.`),
        h("label", { for: "contribution", class: "slider-label" }, "Your contribution ", output),
        h("div", { class: "slider" }, h("span", { "aria-hidden": "true" }, "0"), slider, h("span", { "aria-hidden": "true" }, format(endowment))),
        h("p", { id: "contribution-help", class: "muted" }, `Arrow keys move it in steps of ${format(step)}.`),
        barList,
        total),
      h("div", { class: "charts" }, h("h3", {}, "Contributions over the period"), chart)),
  );

  const draw = (now) => {
    const period = game.period();
    const t0 = period.started_at ?? now;
    const t1 = period.ends_at ?? Math.max(now, t0 + 10_000);
    const cursor = period.ended_at ?? (period.paused ? period.paused_at ?? now : now);
    drawSteps(chart, {
      series: [...series].map(([code, points]) => ({ points, color: game.color(code) })),
      t0, t1, cursor, lo: 0, hi: endowment, format,
    });
    chart.dataset.points = String([...series.values()].reduce((n, p) => n + p.length, 0));
  };

  return {
    decisions(decisions, at) {
      if (!(game.me in decisions)) return;
      let sum = 0;
      for (const code of order) {
        const c = Number(decisions[code] ?? 0);
        sum += c;
        const bar = bars.get(code);
        bar.fill.style.width = `${(100 * c) / endowment}%`;
        bar.value.textContent = format(c);
        const points = series.get(code);
        const last = points[points.length - 1];
        if (!last || last.v !== c) points.push({ t: at, v: c });
        if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
      }
      total.textContent = `The group contributes ${format(sum)} in all; each member receives ${format(mpcr * sum)} from it.`;
      total.dataset.sum = String(sum);
      control.follow(decisions[game.me]);
      draw(at);
    },
    flowPayoff(decisions) {
      if (!(game.me in decisions)) return null;
      const sum = game.members.reduce((s, c) => s + Number(decisions[c] ?? 0), 0);
      return endowment - Number(decisions[game.me]) + mpcr * sum;
    },
    ...sliderChartHooks(control, draw, () => {
      for (const points of series.values()) points.length = 0;
    }),
  };
}

function format(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0$/, "");
}
