// The bimatrix game's view: a slider for the weight on A, the payoff table, and live charts of
// both players' decisions and flow payoffs over the period (CONTRACT §5).

import { drawSteps } from "/static/chart.js";
import { decisionSlider, h, sliderChartHooks } from "/static/games/generic.js";

const CELLS = ["AA", "AB", "BA", "BB"];
const MAX_POINTS = 4000;

export function createView(game) {
  const [row, col] = game.members;
  const other = game.me === row ? col : row;
  const mine = game.me === row ? 0 : 1; // my index in each payoff pair
  const table = game.config.payoffs;

  /** The expected payoff of `who` when row plays A with weight p and col with weight q. */
  const payoff = (who, decisions) => {
    const p = Number(decisions[row] ?? 0.5);
    const q = Number(decisions[col] ?? 0.5);
    const i = who === row ? 0 : 1;
    return p * q * table.AA[i] + p * (1 - q) * table.AB[i] + (1 - p) * q * table.BA[i] + (1 - p) * (1 - q) * table.BB[i];
  };
  /** The cell of the table from my point of view: my action first. */
  const cell = (mineA, theirsA) => (game.me === row ? `${mineA}${theirsA}` : `${theirsA}${mineA}`);

  // ---- the slider
  const slider = h("input", {
    id: "weight", type: "range", min: "0", max: "1", step: "0.01", value: "0.5",
    "aria-describedby": "weight-help",
  });
  const output = h("output", { for: "weight", id: "weight-value" }, "0.50");
  const control = decisionSlider(game, slider, output, (v) => v.toFixed(2));

  // ---- the payoff table: rows are my actions, columns the other's; each cell "mine, theirs"
  const cells = {};
  const head = h("tr", {}, h("td", {}), h("th", { scope: "col" }, "Other: A"), h("th", { scope: "col" }, "Other: B"));
  const body = ["A", "B"].map((a) => h(
    "tr", {}, h("th", { scope: "row" }, `You: ${a}`),
    ...["A", "B"].map((b) => {
      const pair = table[cell(a, b)];
      const td = h("td", { "data-cell": `${a}${b}` }, h("strong", {}, String(pair[mine])), ", ", String(pair[1 - mine]));
      cells[`${a}${b}`] = td;
      return td;
    }),
  ));
  const matrix = h("table", { class: "payoffs", "aria-label": "Payoffs: yours first, then the other player's" },
    h("thead", {}, head), h("tbody", {}, ...body));

  // ---- the charts
  const series = { decisions: new Map([[game.me, []], [other, []]]), payoffs: new Map([[game.me, []], [other, []]]) };
  const decisionChart = h("canvas", { class: "chart", role: "img", "data-points": "0", "aria-label": "Decisions over the period" });
  const payoffChart = h("canvas", { class: "chart", role: "img", "data-points": "0", "aria-label": "Flow payoffs over the period" });
  const summary = h("p", { class: "chart-summary", "aria-live": "polite" });
  const legend = h("p", { class: "legend" },
    h("span", { class: "swatch", style: `background:${game.color(game.me)}` }), " You   ",
    h("span", { class: "swatch", style: `background:${game.color(other)}` }), " Other player");
  const lows = CELLS.map((c) => Math.min(...table[c]));
  const highs = CELLS.map((c) => Math.max(...table[c]));
  const range = { lo: Math.min(0, ...lows), hi: Math.max(...highs) };

  game.root.append(
    h("div", { class: "columns" },
      h("div", { class: "controls" },
        h("p", { class: "role" }, `You are the ${game.role === "row" ? "row" : "column"} player.`),
        h("label", { for: "weight", class: "slider-label" }, "Your weight on A ", output),
        h("div", { class: "slider" }, h("span", { "aria-hidden": "true" }, "B"), slider, h("span", { "aria-hidden": "true" }, "A")),
        h("p", { id: "weight-help", class: "muted" }, "0 plays B for sure, 1 plays A for sure; in between you mix. Arrow keys move it in steps of 0.01."),
        matrix),
      h("div", { class: "charts" },
        legend,
        h("h3", {}, "Weight on A"), decisionChart,
        h("h3", {}, "Flow payoff"), payoffChart,
        summary)),
  );

  const add = (points, t, v) => {
    const last = points[points.length - 1];
    if (last && last.v === v) return;
    points.push({ t, v });
    if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
  };

  const draw = (now) => {
    const period = game.period();
    const t0 = period.started_at ?? now;
    const t1 = period.ends_at ?? Math.max(now, t0 + 10_000);
    const cursor = period.ended_at ?? (period.paused ? period.paused_at ?? now : now);
    const color = (code) => game.color(code);
    drawSteps(decisionChart, {
      series: [...series.decisions].map(([code, points]) => ({ points, color: color(code) })),
      t0, t1, cursor, lo: 0, hi: 1, format: (v) => v.toFixed(1),
    });
    drawSteps(payoffChart, {
      series: [...series.payoffs].map(([code, points]) => ({ points, color: color(code) })),
      t0, t1, cursor, lo: range.lo, hi: range.hi, format: (v) => v.toFixed(0),
    });
    decisionChart.dataset.points = String(series.decisions.get(game.me).length + series.decisions.get(other).length);
    payoffChart.dataset.points = String(series.payoffs.get(game.me).length + series.payoffs.get(other).length);
  };

  return {
    decisions(decisions, at) {
      if (!(game.me in decisions)) return;
      for (const code of [game.me, other]) {
        add(series.decisions.get(code), at, Number(decisions[code]));
        add(series.payoffs.get(code), at, payoff(code, decisions));
      }
      control.follow(decisions[game.me]);
      const p = Number(decisions[game.me]);
      const q = Number(decisions[other]);
      for (const [key, weight] of Object.entries({ AA: p * q, AB: p * (1 - q), BA: (1 - p) * q, BB: (1 - p) * (1 - q) })) {
        cells[key].style.setProperty("--weight", weight.toFixed(3));
      }
      summary.textContent = `You ${p.toFixed(2)}, other player ${q.toFixed(2)}`;
      summary.dataset.mine = String(p);
      summary.dataset.other = String(q);
      draw(at);
    },
    flowPayoff(decisions) {
      return game.me in decisions ? payoff(game.me, decisions) : null;
    },
    ...sliderChartHooks(control, draw, () => {
      for (const map of Object.values(series)) for (const points of map.values()) points.length = 0;
    }),
  };
}
