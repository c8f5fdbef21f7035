// Text drawn on a node below its widgets (the base model's family, the Captioner's sample captions).
// Pure helpers only (no ComfyUI import), so node --test checks them; ComfyUI also loads this file as an
// extension module, where it registers nothing.

export const LINE_HEIGHT = 16;

// Lines of at most `width` pixels (as `measure` says), paragraphs kept; a word wider than the line stays whole.
export function wrapText(measure, text, width) {
  const lines = [];
  for (const paragraph of String(text ?? "").split("\n")) {
    let line = "";
    for (const word of paragraph.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (line && measure(next) > width) {
        lines.push(line);
        line = word;
      } else {
        line = next;
      }
    }
    lines.push(line);
  }
  return lines;
}

// At most `maxLines` lines, the last one saying how many were left out.
export function limitLines(lines, maxLines) {
  if (!Number.isFinite(maxLines) || lines.length <= maxLines) return lines;
  return [...lines.slice(0, Math.max(0, maxLines - 1)), `… (${lines.length - maxLines + 1} more lines)`];
}

// The text of a node's "ui" output ({"text": ["..."]} as ComfyUI sends it to onExecuted), or null when it has none.
export function textFromMessage(message) {
  const parts = message?.text;
  if (!Array.isArray(parts) || parts.length === 0) return null;
  return parts.map((part) => String(part)).join("\n");
}

// Where the widgets end, in node coordinates.
export function widgetsBottom(node, fallbackHeight = 20) {
  let bottom = 0;
  for (const widget of node.widgets ?? []) {
    const y = widget.last_y ?? widget.y;
    if (Number.isFinite(y)) bottom = Math.max(bottom, y + (widget.computedHeight ?? fallbackHeight));
  }
  return bottom + 8;
}

// Draw `text` under the widgets, wrapped to the node's width, and grow the node to fit it.
export function drawTextBlock(node, ctx, text, { color = "#d8dde6", maxLines = Infinity, font = "12px sans-serif", widgetHeight = 20 } = {}) {
  ctx.save();
  ctx.font = font;
  ctx.fillStyle = color;
  ctx.textBaseline = "top";
  const lines = limitLines(wrapText((value) => ctx.measureText(value).width, text, node.size[0] - 20), maxLines);
  const top = widgetsBottom(node, widgetHeight);
  lines.forEach((line, index) => ctx.fillText(line, 10, top + index * LINE_HEIGHT));
  const needed = top + lines.length * LINE_HEIGHT + 6;
  if (node.size[1] < needed) node.setSize?.([node.size[0], needed]);
  ctx.restore();
  return lines.length;
}
