// The minimum-effort game's view: seven effort buttons and the group's efforts now.
// Started from static/games/generic.js, the template; see docs/writing-a-game.md.

import { h } from "/static/games/generic.js";

export function createView(game) {
  const { a, b } = game.config;
  const buttons = new Map();
  for (let effort = 1; effort <= 7; effort += 1) {
    buttons.set(effort, h("button", {
      type: "button", class: "choice", "aria-pressed": "false", "data-effort": String(effort),
      onclick: () => game.decide(effort),
    }, String(effort)));
  }
  const efforts = h("ul", { class: "efforts", "aria-label": "Your group's efforts" });
  const minimum = h("p", { class: "minimum" });
  game.root.append(
    h("p", {}, `Pick your effort from 1 to 7, at any moment. You earn ${a} × the group's lowest effort − ${b} × your own, each second.`),
    h("div", { class: "choices", role: "group", "aria-label": "Your effort" }, ...buttons.values()),
    h("h3", {}, "Your group now"), minimum, efforts,
  );
  const low = (decisions) => Math.min(...game.members.map((code) => decisions[code] ?? 7));

  return {
    decisions(decisions) {
      for (const [effort, button] of buttons) button.setAttribute("aria-pressed", String(decisions[game.me] === effort));
      minimum.textContent = `Lowest effort: ${low(decisions)}`;
      efforts.replaceChildren(...game.members.map((code) => h(
        "li", { "data-member": code }, `${game.label(code)}: ${decisions[code] ?? "–"}`,
      )));
    },
    flowPayoff(decisions) {
      return a * low(decisions) - b * (decisions[game.me] ?? 7);
    },
    periodEnd() {
      for (const button of buttons.values()) button.disabled = true;
    },
  };
}
