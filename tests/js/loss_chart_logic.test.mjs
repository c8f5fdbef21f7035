// node --test tests/js : the chart's pure logic (smoothing, merging, scaling, formatting, event handling).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  applyEvent, bestValidation, emaSmooth, emptyState, formatDuration, formatLr, formatRate, fromServerRun, fromStored, mergeLosses,
  mergeValidation, statusLine, thin, toCanvasPoints, toStored, validationCanvasPoints, valueRange,
} from "../../web/js/loss_chart_logic.js";

test("emaSmooth matches core's 0.9/0.1 average and skips non-finite values", () => {
  const s = emaSmooth([1, 0, 0]);
  assert.ok(Math.abs(s[1] - 0.9) < 1e-12 && Math.abs(s[2] - 0.81) < 1e-12);
  assert.deepEqual(emaSmooth([null, 2, NaN, 2]), [null, 2, 2, 2]);
});

test("mergeLosses places steps by their 1-based number and replaces on resume", () => {
  assert.deepEqual(mergeLosses([], 1, [0.5, 0.4]), [0.5, 0.4]);
  assert.deepEqual(mergeLosses([0.5, 0.4], 3, [0.3]), [0.5, 0.4, 0.3]);
  assert.deepEqual(mergeLosses([0.5, 0.4, 0.3], 2, [0.9]), [0.5, 0.9], "a resumed step replaces later ones");
  assert.deepEqual(mergeLosses([0.5], 4, [0.2]), [0.5, null, null, 0.2], "missed steps stay a gap");
});

test("thin keeps the first and last points and the limit", () => {
  const values = Array.from({ length: 1001 }, (_, i) => i);
  const thinned = thin(values, 11);
  assert.equal(thinned.length, 11);
  assert.equal(thinned[0], 0);
  assert.equal(thinned.at(-1), 1000);
  assert.deepEqual(thin([1, 2], 11), [1, 2]);
});

test("valueRange pads and survives flat, empty and non-finite curves", () => {
  assert.deepEqual(valueRange([]), [0, 1]);
  const [low, high] = valueRange([1, 2, NaN, null]);
  assert.ok(low < 1 && high > 2 && Math.abs(high - 2.05) < 1e-9);
  const [flatLow, flatHigh] = valueRange([0.3, 0.3]);
  assert.ok(flatLow < 0.3 && flatHigh > 0.3);
});

test("toCanvasPoints spreads steps over the total and flips y", () => {
  const rect = { x: 10, y: 20, width: 100, height: 50 };
  const points = toCanvasPoints([1, null, 0], 3, rect, [0, 1]);
  assert.deepEqual(points[0], [10, 20]);
  assert.equal(points[1], null);
  assert.deepEqual(points[2], [110, 70]);
  const partial = toCanvasPoints([1, 0], 11, rect, [0, 1]);
  assert.ok(Math.abs(partial[1][0] - 20) < 1e-9, "two steps of eleven use a tenth of the width");
});

test("formatting of durations, rates and learning rates", () => {
  assert.equal(formatDuration(65), "1:05");
  assert.equal(formatDuration(3725), "1:02:05");
  assert.equal(formatDuration(undefined), "?");
  assert.equal(formatRate(0.25), "4.00 it/s");
  assert.equal(formatRate(2.5), "2.50 s/it");
  assert.equal(formatRate(0), "? it/s");
  assert.equal(formatLr(0.0001), "1.0e-4");
});

test("applyEvent follows a run: start, throttled batches, interrupt, resume, done", () => {
  let state = applyEvent(emptyState(), { phase: "start", step: 0, total: 6, resumed_from: 0 });
  assert.equal(state.status, "running");
  state = applyEvent(state, { phase: "train", step: 3, total: 6, loss: 0.3, smoothed_loss: 0.4, lr: 1e-4, seconds_per_step: 0.5, eta_seconds: 1.5, losses: [0.5, 0.4, 0.3], first_step: 1 });
  assert.deepEqual(state.losses, [0.5, 0.4, 0.3]);
  assert.match(statusLine(state), /step 3\/6 .*loss 0\.3000 \(avg 0\.4000\).*lr 1\.0e-4.*2\.00 it\/s.*ETA 0:02/);
  state = applyEvent(state, { phase: "interrupted", step: 3, total: 6 });
  assert.equal(state.status, "interrupted");
  assert.match(state.message, /queue again to resume/);
  const before = state;
  state = applyEvent(state, { phase: "start", step: 2, total: 6, resumed_from: 2 });
  assert.deepEqual(state.losses, [0.5, 0.4], "resuming from step 2 drops the steps after the checkpoint");
  assert.deepEqual(before.losses, [0.5, 0.4, 0.3], "events never mutate the previous state");
  state = applyEvent(state, { phase: "train", step: 6, total: 6, loss: 0.1, smoothed_loss: 0.2, losses: [0.25, 0.2, 0.15, 0.1], first_step: 3 });
  state = applyEvent(state, { phase: "done", step: 6, total: 6 });
  assert.equal(state.losses.length, 6);
  assert.equal(state.status, "done");
  assert.equal(applyEvent(state, { phase: "unknown" }), state);
});

test("stored and server records restore the curve after a reload", () => {
  const state = { ...emptyState(), losses: Array.from({ length: 1000 }, (_, i) => 1 / (i + 1)), step: 1000, total: 1000, status: "done" };
  const stored = JSON.parse(JSON.stringify(toStored(state)));
  assert.equal(stored.losses.length, 400);
  const restored = fromStored(stored);
  assert.equal(restored.total, 1000);
  assert.equal(restored.status, "done");
  assert.equal(fromStored(undefined).losses.length, 0);
  const running = toStored({ ...state, status: "running" });
  assert.equal(running.status, "stale", "a run seen mid-way is not claimed to be running after a reload");
  const server = fromServerRun({ loss: [0.5, 0.4], step: 2, total: 10, status: "running", lr: 1e-4 });
  assert.equal(server.loss, 0.4);
  assert.equal(fromServerRun({ error: "x" }), null);
});


test("validation points form their own series, sorted by step, a repeated step replacing the old point", () => {
  let state = applyEvent(emptyState(), { phase: "start", step: 0, total: 10 });
  state = applyEvent(state, { phase: "validation", step: 4, total: 10, validation_loss: 0.3 });
  state = applyEvent(state, { phase: "validation", step: 2, total: 10, validation_loss: 0.5 });
  state = applyEvent(state, { phase: "validation", step: 4, total: 10, validation_loss: 0.25 });
  assert.deepEqual(state.validation, [[2, 0.5], [4, 0.25]]);
  assert.deepEqual(state.losses, [], "validation never touches the training curve");
  assert.deepEqual(mergeValidation([[1, 1]], 3, "0.5"), [[1, 1], [3, 0.5]]);
});

test("the best validation step is the lowest loss, the earliest of equal ones", () => {
  assert.deepEqual(bestValidation([[2, 0.5], [4, 0.25], [6, 0.25], [8, 0.4]]), [4, 0.25]);
  assert.equal(bestValidation([]), null);
  const line = statusLine({ ...emptyState(), total: 10, step: 8, validation: [[2, 0.5], [4, 0.25], [8, 0.4]] });
  assert.match(line, /val 0\.4000 \(best 0\.2500 @ 4\)/);
});

test("a resume keeps the validation points up to the checkpoint and a new run drops them", () => {
  const before = { ...emptyState(), losses: [1, 0.9, 0.8, 0.7], validation: [[2, 0.6], [4, 0.5]], total: 8 };
  assert.deepEqual(applyEvent(before, { phase: "start", step: 2, total: 8, resumed_from: 3 }).validation, [[2, 0.6]]);
  assert.deepEqual(applyEvent(before, { phase: "start", step: 0, total: 8 }).validation, []);
});

test("validation points sit on the training curve's x scale and survive a reload", () => {
  const rect = { x: 0, y: 0, width: 90, height: 10 };
  const [[x2], [x10]] = validationCanvasPoints([[2, 0.5], [10, 0.5]], 10, rect, [0, 1]);
  const train = toCanvasPoints(Array(10).fill(0.5), 10, rect, [0, 1]);
  assert.equal(x2, train[1][0]);
  assert.equal(x10, train[9][0]);
  const state = { ...emptyState(), losses: [1, 0.5], validation: [[2, 0.7]], total: 4, step: 2, status: "done" };
  assert.deepEqual(fromStored(JSON.parse(JSON.stringify(toStored(state)))).validation, [[2, 0.7]]);
  assert.deepEqual(fromServerRun({ loss: [1, 0.5], validation: [[2, 0.7]], step: 2, total: 4, status: "done" }).validation, [[2, 0.7]]);
  assert.deepEqual(fromStored({ losses: [1] }).validation, [], "a run stored before validation existed has none");
});
