// Live loss chart inside the LoRA Trainer's TrainLoRA node.
// Served by ComfyUI at /extensions/<folder>/js/, so its own modules are three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import {
  applyEvent, bestValidation, emaSmooth, emptyState, formatLoss, fromServerRun, fromStored, statusLine, toCanvasPoints, toStored,
  validationCanvasPoints, valueRange,
} from "./loss_chart_logic.js";

const NODE_TYPE = "LoRATrainer_TrainLoRA";
const EVENT = "lora_trainer.progress";
const PROPERTY = "lora_trainer_last_run";
const CHART_MIN_HEIGHT = 170;
const COLORS = { background: "#1b1d22", grid: "#353a44", raw: "rgba(120,170,255,0.45)", smooth: "#ffb347", validation: "#6fdc8c", text: "#d8dde6", dim: "#8a93a3" };

function chartState(node) {
  if (!node.__loraChart) node.__loraChart = fromStored(node.properties?.[PROPERTY]);
  return node.__loraChart;
}

function setState(node, state, persist) {
  node.__loraChart = state;
  if (persist) {
    node.properties = node.properties || {};
    node.properties[PROPERTY] = toStored(state);
    // The frontend saves the workflow (and so node properties) only when its change tracker looks, which
    // happens on user input: without this, a run nobody touched the page during is lost on a restart.
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }
  node.setDirtyCanvas?.(true, true);
}

// Bottom of the node's widgets in node coordinates; the chart takes the space below them.
function widgetsBottom(node) {
  let bottom = 0;
  for (const widget of node.widgets ?? []) {
    if (widget.type === "lora_trainer_chart") continue;
    const y = widget.last_y ?? widget.y;
    if (Number.isFinite(y)) bottom = Math.max(bottom, y + (widget.computedHeight ?? globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20));
  }
  return bottom + 6;
}

function polyline(ctx, points) {
  let open = false;
  ctx.beginPath();
  for (const point of points) {
    if (!point) { open = false; continue; }
    if (open) ctx.lineTo(point[0], point[1]); else ctx.moveTo(point[0], point[1]);
    open = true;
  }
  ctx.stroke();
}

function drawChart(ctx, node) {
  const state = chartState(node);
  const top = widgetsBottom(node);
  const box = { x: 8, y: top, width: node.size[0] - 16, height: node.size[1] - top - 8 };
  if (box.height < 60 || box.width < 80) return;
  ctx.save();
  ctx.fillStyle = COLORS.background;
  ctx.beginPath();
  ctx.roundRect ? ctx.roundRect(box.x, box.y, box.width, box.height, 6) : ctx.rect(box.x, box.y, box.width, box.height);
  ctx.fill();
  ctx.font = "11px sans-serif";
  ctx.fillStyle = COLORS.text;
  ctx.textBaseline = "top";
  ctx.fillText(statusLine(state), box.x + 6, box.y + 5, box.width - 12);
  if (state.message) {
    ctx.fillStyle = state.status === "interrupted" || state.status === "error" ? "#ff8080" : COLORS.dim;
    ctx.fillText(state.message, box.x + 6, box.y + 19, box.width - 12);
  }
  const plot = { x: box.x + 44, y: box.y + 36, width: box.width - 54, height: box.height - 48 };
  if (plot.height > 20) {
    const smooth = emaSmooth(state.losses);
    const validation = state.validation ?? [];
    const range = valueRange(state.losses.concat(validation.map(([, loss]) => loss)));
    ctx.strokeStyle = COLORS.grid;
    ctx.lineWidth = 1;
    ctx.strokeRect(plot.x, plot.y, plot.width, plot.height);
    ctx.fillStyle = COLORS.dim;
    ctx.textBaseline = "middle";
    ctx.fillText(formatLoss(range[1]), box.x + 4, plot.y + 4, 38);
    ctx.fillText(formatLoss(range[0]), box.x + 4, plot.y + plot.height - 4, 38);
    if (state.losses.length) {
      ctx.lineWidth = 1;
      ctx.strokeStyle = COLORS.raw;
      polyline(ctx, toCanvasPoints(state.losses, state.total, plot, range));
      ctx.lineWidth = 2;
      ctx.strokeStyle = COLORS.smooth;
      polyline(ctx, toCanvasPoints(smooth, state.total, plot, range));
      if (validation.length) drawValidation(ctx, validation, state.total, plot, range);
      ctx.fillStyle = COLORS.smooth;
      ctx.fillText("smoothed", plot.x + plot.width - 110, plot.y + 8);
      ctx.fillStyle = "rgba(120,170,255,0.9)";
      ctx.fillText("raw", plot.x + plot.width - 40, plot.y + 8);
    } else {
      ctx.fillStyle = COLORS.dim;
      ctx.textAlign = "center";
      ctx.fillText("the loss curve appears here while training", plot.x + plot.width / 2, plot.y + plot.height / 2);
    }
  }
  ctx.restore();
}

// The held-out loss as its own series (dots joined by a line) and the best step marked with a ring and a dashed line.
function drawValidation(ctx, validation, total, plot, range) {
  const points = validationCanvasPoints(validation, total, plot, range);
  ctx.strokeStyle = COLORS.validation;
  ctx.fillStyle = COLORS.validation;
  ctx.lineWidth = 1.5;
  polyline(ctx, points);
  for (const [x, y] of points) {
    ctx.beginPath();
    ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  const best = bestValidation(validation);
  const [bx, by] = validationCanvasPoints([best], total, plot, range)[0];
  ctx.setLineDash([3, 3]);
  ctx.beginPath();
  ctx.moveTo(bx, plot.y);
  ctx.lineTo(bx, plot.y + plot.height);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.beginPath();
  ctx.arc(bx, by, 5, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.fillText(`best @ ${best[0]}`, Math.min(bx + 4, plot.x + plot.width - 60), plot.y + plot.height - 10);
  ctx.fillText("validation", plot.x + plot.width - 180, plot.y + 8);
}

async function restoreFromServer(node) {
  try {
    const response = await api.fetchApi(`/lora_trainer/last_run/${encodeURIComponent(String(node.id))}`);
    if (!response.ok) return;
    const restored = fromServerRun(await response.json());
    // Kept in the node's properties too, so the workflow carries the curve past a server restart.
    if (restored && restored.losses.length >= chartState(node).losses.length) setState(node, restored, true);
  } catch (error) {
    console.debug("lora_trainer: no server record of the last run", error);
  }
}

app.registerExtension({
  name: "lora_trainer.live_loss_chart",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      chartState(this);
      this.size[1] = Math.max(this.size[1], widgetsBottom(this) + CHART_MIN_HEIGHT);
      return result;
    };

    // Keep room for the chart whatever the widgets need; the chart then fills whatever size the user drags to.
    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function () {
      const size = computeSize ? computeSize.apply(this, arguments) : [320, 400];
      return [Math.max(size[0], 340), size[1] + CHART_MIN_HEIGHT];
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.__loraChart = fromStored(this.properties?.[PROPERTY]);
      restoreFromServer(this);
      return result;
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) drawChart(ctx, this);
      return result;
    };
  },

  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      if (!detail || detail.node === undefined) return;
      const id = String(detail.node);
      const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
      if (!node || node.type !== NODE_TYPE) return;
      const next = applyEvent(chartState(node), detail);
      setState(node, next, detail.phase !== "train" && detail.phase !== "cache"); // persist at start/save/validation/end, not every step
    });
  },
});
