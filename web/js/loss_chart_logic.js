// Pure logic of the live loss chart: no DOM, no ComfyUI, so `node --test` covers it.
// The drawing code in lora_trainer.js only maps what these functions return onto a canvas.

export const SMOOTHING = 0.1; // the same exponential average core reports as smoothed_loss
export const MAX_STORED_POINTS = 400; // what is kept in the node's properties (the workflow file)

/** Exponential moving average, seeded with the first value (as core's smoothed_loss). */
export function emaSmooth(values, alpha = SMOOTHING) {
  const out = [];
  let current = null;
  for (const value of values) {
    if (!Number.isFinite(value)) { out.push(current); continue; }
    current = current === null ? value : (1 - alpha) * current + alpha * value;
    out.push(current);
  }
  return out;
}

/** Put losses of steps firstStep.. (1-based) into the curve; a resumed or repeated step replaces what was there. */
export function mergeLosses(losses, firstStep, incoming) {
  const start = Math.max(0, (firstStep | 0) - 1);
  const merged = losses.slice(0, start);
  while (merged.length < start) merged.push(null); // a gap (e.g. a reload mid-run) stays a gap
  return merged.concat(incoming.map(Number));
}

/** At most maxPoints values, evenly spaced, always keeping the last one. */
export function thin(values, maxPoints = MAX_STORED_POINTS) {
  if (values.length <= maxPoints) return values.slice();
  const out = [];
  const stride = (values.length - 1) / (maxPoints - 1);
  for (let i = 0; i < maxPoints; i++) out.push(values[Math.round(i * stride)]);
  return out;
}

/** [low, high] of the finite values with 5% padding; a flat or empty curve still gets a usable range. */
export function valueRange(values) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  let low = Math.min(...finite), high = Math.max(...finite);
  if (high - low < 1e-12) { const pad = Math.abs(high) * 0.1 || 0.5; return [low - pad, high + pad]; }
  const pad = (high - low) * 0.05;
  return [low - pad, high + pad];
}

/**
 * Canvas points for a curve: x spreads steps over the run's total (so the line grows across the chart),
 * y maps the range onto the rectangle (top = high). Missing values break the line (null entries).
 */
export function toCanvasPoints(values, total, rect, range) {
  const [low, high] = range;
  const span = Math.max(total, values.length, 1);
  return values.map((value, index) => {
    if (!Number.isFinite(value)) return null;
    const x = rect.x + (span <= 1 ? 0 : (index / (span - 1)) * rect.width);
    const y = rect.y + rect.height - ((value - low) / (high - low)) * rect.height;
    return [x, y];
  });
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const whole = Math.round(seconds);
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

/** it/s when faster than one step a second, else s/it (what people read off training logs). */
export function formatRate(secondsPerStep) {
  if (!Number.isFinite(secondsPerStep) || secondsPerStep <= 0) return "? it/s";
  return secondsPerStep < 1 ? `${(1 / secondsPerStep).toFixed(2)} it/s` : `${secondsPerStep.toFixed(2)} s/it`;
}

export function formatLr(lr) {
  return Number.isFinite(lr) ? lr.toExponential(1) : "?";
}

export function formatLoss(loss) {
  if (!Number.isFinite(loss)) return "?";
  return Math.abs(loss) >= 100 ? loss.toFixed(1) : loss.toPrecision(4);
}

export function emptyState() {
  return { losses: [], validation: [], step: 0, total: 0, loss: null, smoothed: null, lr: null, secondsPerStep: null, eta: null, status: "idle", message: "" };
}

/** Put one validation point [step, loss] into the series (sorted by step; a repeated step replaces the old point). */
export function mergeValidation(points, step, loss) {
  const kept = (points ?? []).filter(([s]) => s !== step);
  kept.push([step, Number(loss)]);
  return kept.sort((a, b) => a[0] - b[0]);
}

/** The [step, loss] of the lowest validation loss (the earliest of equal ones), or null. */
export function bestValidation(points) {
  let best = null;
  for (const point of points ?? []) {
    if (Number.isFinite(point[1]) && (best === null || point[1] < best[1])) best = point;
  }
  return best;
}

/** Canvas points of the validation series, on the same x scale as the training curve (step s sits where loss s does). */
export function validationCanvasPoints(points, total, rect, range) {
  const span = Math.max(total, 1);
  const [low, high] = range;
  return (points ?? []).map(([step, loss]) => [
    rect.x + (span <= 1 ? 0 : ((step - 1) / (span - 1)) * rect.width),
    rect.y + rect.height - ((loss - low) / (high - low)) * rect.height,
  ]);
}

/** The chart state after one `lora_trainer.progress` websocket event (a new object; the old one is untouched). */
export function applyEvent(state, event) {
  const next = { ...state };
  const total = Number(event.total) || state.total;
  switch (event.phase) {
    case "start":
      next.losses = event.resumed_from ? state.losses.slice(0, event.resumed_from) : [];
      next.validation = event.resumed_from ? (state.validation ?? []).filter(([s]) => s <= event.resumed_from) : [];
      Object.assign(next, { step: event.step || 0, total, status: "running", message: event.resumed_from ? `resumed at step ${event.resumed_from}` : "" });
      break;
    case "cache":
      Object.assign(next, { status: "running", message: `encoding images ${event.step}/${event.total}` });
      break;
    case "train":
      if (Array.isArray(event.losses)) next.losses = mergeLosses(state.losses, event.first_step ?? event.step, event.losses);
      Object.assign(next, { step: event.step, total, status: "running", message: "" });
      if (event.loss !== undefined) Object.assign(next, { loss: event.loss, smoothed: event.smoothed_loss, lr: event.lr, secondsPerStep: event.seconds_per_step, eta: event.eta_seconds });
      break;
    case "save":
      next.message = event.message || "checkpoint saved";
      break;
    case "validation":
      next.validation = mergeValidation(state.validation, event.step, event.validation_loss);
      next.message = event.message || "";
      break;
    case "done": case "interrupted": case "error":
      Object.assign(next, { status: event.phase, step: event.step ?? state.step, eta: event.phase === "done" ? 0 : state.eta });
      next.message = event.phase === "interrupted" ? "cancelled: queue again to resume" : event.phase === "error" ? "stopped by an error" : "finished";
      break;
    default:
      return state;
  }
  return next;
}

/** One line above the chart: step/total, loss (avg), lr, speed, ETA. */
export function statusLine(state) {
  if (!state.total) return "waiting for the first run";
  const parts = [`step ${state.step}/${state.total}`];
  if (state.loss !== null && state.loss !== undefined) parts.push(`loss ${formatLoss(state.loss)} (avg ${formatLoss(state.smoothed)})`);
  if (state.lr !== null && state.lr !== undefined) parts.push(`lr ${formatLr(state.lr)}`);
  if (state.secondsPerStep) parts.push(formatRate(state.secondsPerStep));
  const best = bestValidation(state.validation);
  if (best) parts.push(`val ${formatLoss(state.validation.at(-1)[1])} (best ${formatLoss(best[1])} @ ${best[0]})`);
  if (state.status === "running") parts.push(`ETA ${formatDuration(state.eta)}`);
  return parts.join("  ·  ");
}

/** What is stored in node.properties so the curve survives a page reload (thinned, plain JSON). */
export function toStored(state) {
  return {
    losses: thin(state.losses), points: state.losses.length, validation: thin(state.validation ?? []), step: state.step, total: state.total,
    status: state.status === "running" ? "stale" : state.status,
  };
}

function validationList(points) {
  return Array.isArray(points) ? points.filter((p) => Array.isArray(p) && p.length === 2).map(([s, v]) => [Number(s), Number(v)]) : [];
}

export function fromStored(stored) {
  if (!stored || !Array.isArray(stored.losses)) return emptyState();
  return {
    ...emptyState(), losses: stored.losses.map((v) => (v === null ? null : Number(v))), validation: validationList(stored.validation),
    step: stored.step | 0, total: stored.total | 0, status: stored.status || "idle", message: "last run",
  };
}

/** The server's record of the last run (GET /lora_trainer/last_run/<node id>) as chart state. */
export function fromServerRun(run) {
  if (!run || !Array.isArray(run.loss)) return null;
  return {
    ...emptyState(), losses: run.loss, validation: validationList(run.validation), step: run.step | 0, total: run.total | 0, loss: run.loss.at(-1) ?? null,
    smoothed: run.smoothed_loss ?? null, lr: run.lr ?? null, secondsPerStep: run.seconds_per_step ?? null,
    eta: run.eta_seconds ?? null, status: run.status || "done", message: run.status === "running" ? "" : "last run",
  };
}
