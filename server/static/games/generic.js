// The generic game view, and the template for your own: copy this file beside your game's
// Python file, name it in the game class (`view = "mygame.js"`), and change what it draws.
//
// The participant page (static/participant.js) does everything around the game: the socket,
// reconnecting, the server's clock, the waiting screen, the countdown, the payoffs, the
// screens between blocks and at the end. It calls `createView(game)` once per block with:
//
//   game.root          the element to draw into (empty)
//   game.hello         the `hello` payload (participant, group, members, role, block, config, …)
//   game.me            this participant's code; game.members: the group's codes, in order
//   game.role          the role the game gave this participant (or null)
//   game.config        the game's config, defaults filled in
//   game.decide(v)     send a decision; kept and sent again after a reconnect until stored
//   game.send(ch, v)   send a frame on one of the game's own channels
//   game.serverNow()   the server's clock (ms since the epoch), measured over `ping`
//   game.period()      {started_at, ends_at, paused, …} in server ms
//   game.label(code)   "You" or "Player n";  game.color(code): a colour per member
//
// and the view returns the hooks it wants (all optional):
//
//   decisions(groupDecisions, at)   the group's decisions changed (at: server ms)
//   flowPayoff(groupDecisions)      this participant's flow payoff: shown, and accrued over time
//   subperiod({index, group_decisions}, at), periodStart(period), periodEnd(at)
//   message(channel, payload, frame)  a frame on a channel of the game's own
//   frame(now)                        about ten times a second while the period runs
//   destroy()                         the block is over; the page removes `root`'s content

/** An element with attributes and children (a tiny helper; views may use anything). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

export function createView(game) {
  const list = h("dl", { class: "decisions" });
  const input = h("input", { id: "decision-input", type: "text", value: "", autocomplete: "off" });
  const form = h(
    "form",
    { class: "decide", onsubmit: (event) => {
      event.preventDefault();
      let value = input.value;
      try {
        value = JSON.parse(input.value); // a number, true/false, a JSON object …
      } catch {
        // … or else the text as it is
      }
      game.decide(value);
    } },
    h("label", { for: "decision-input" }, "Your decision"),
    input,
    h("button", { type: "submit" }, "Send"),
  );
  game.root.append(
    h("p", { class: "muted" }, game.role ? `Your role: ${game.role}.` : ""),
    form,
    h("h3", {}, "Your group's decisions"),
    list,
  );
  return {
    decisions(decisions) {
      const rows = [];
      for (const code of game.members) {
        rows.push(h("dt", {}, game.label(code)), h("dd", {}, JSON.stringify(decisions[code] ?? null)));
      }
      list.replaceChildren(...rows);
    },
  };
}

/**
 * Wire a range input (and its `<output>`) to `game.decide`, as the bundled views do: while it is
 * dragged it sends at most every `every` ms, its release always sends, and the value last sent
 * is never sent again. Until the participant touches it, `follow(value)` moves it to the value
 * the server holds. `reset()` at a period's start, `tick()` on each frame (disabled while
 * paused), `end()` when the period ends, `stop()` when the view goes.
 */
export function decisionSlider(game, slider, output, format, every = 120) {
  let lastSent = 0;
  let lastValue = null;
  let timer = null;
  let touched = false;
  const send = () => {
    clearTimeout(timer);
    timer = null;
    const value = Number(slider.value);
    if (value === lastValue) return; // the release after a move sends nothing new
    lastSent = Date.now();
    lastValue = value;
    game.decide(value);
  };
  slider.addEventListener("input", () => {
    output.textContent = format(Number(slider.value));
    const wait = every - (Date.now() - lastSent);
    if (wait <= 0) send();
    else if (!timer) timer = setTimeout(send, wait);
  });
  slider.addEventListener("change", send);
  slider.addEventListener("pointerdown", () => { touched = true; });
  slider.addEventListener("keydown", () => { touched = true; });
  return {
    follow(value) {
      if (touched || value === undefined || value === null) return;
      slider.value = String(value);
      output.textContent = format(Number(value));
    },
    reset() {
      touched = false;
      lastValue = null;
    },
    tick() {
      slider.disabled = Boolean(game.period().paused);
    },
    end() {
      slider.disabled = true;
    },
    stop() {
      clearTimeout(timer);
    },
  };
}

// What a view of a decision slider and a chart over the period does at the period's edges and on
// every frame (the bundled games): a new period empties the chart (`clear`) and lets the
// slider follow the group again, each frame greys the slider out while paused and redraws, and
// the period's end and the page's leaving stop the slider. Spread it into the view.
export function sliderChartHooks(control, draw, clear) {
  return {
    periodStart(period) {
      clear();
      control.reset();
      draw(period.started_at);
    },
    frame(now) {
      control.tick();
      draw(now);
    },
    periodEnd: control.end,
    destroy: control.stop,
  };
}
