// The stag hunt's view on the participant page: two buttons and what everybody hunts now.
// Started from static/games/generic.js, the template; see the README's guide "Writing a game".

import { h } from "/static/games/generic.js";

export function createView(game) {
  const { stag, hare } = game.config;
  const buttons = {};
  for (const choice of ["stag", "hare"]) {
    buttons[choice] = h(
      "button",
      { type: "button", class: "choice", "aria-pressed": "false", onclick: () => game.decide(choice) },
      choice === "stag" ? `Hunt stag (${stag} a second if everybody does)` : `Hunt hare (${hare} a second, always)`,
    );
  }
  const hunters = h("ul", { class: "hunters", "aria-label": "What your group hunts" });
  game.root.append(
    h("p", {}, "Choose what to hunt; you can change your mind at any moment."),
    h("div", { class: "choices", role: "group", "aria-label": "Your choice" }, buttons.stag, " ", buttons.hare),
    h("h3", {}, "Your group now"),
    hunters,
  );

  return {
    decisions(decisions) {
      for (const [choice, button] of Object.entries(buttons)) {
        button.setAttribute("aria-pressed", String(decisions[game.me] === choice));
      }
      hunters.replaceChildren(...game.members.map((code) => h(
        "li", { "data-member": code }, `${game.label(code)}: ${decisions[code] ?? "–"}`,
      )));
    },
    flowPayoff(decisions) {
      if (decisions[game.me] === "hare") return hare;
      return game.members.every((code) => decisions[code] === "stag") ? stag : 0;
    },
    periodEnd() {
      for (const button of Object.values(buttons)) button.disabled = true;
    },
  };
}
