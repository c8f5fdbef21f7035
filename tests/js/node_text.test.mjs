// node --test tests/js : text drawn on nodes (the Captioner's sample captions, the base model's family).
import { test } from "node:test";
import assert from "node:assert/strict";
import { drawTextBlock, limitLines, textFromMessage, widgetsBottom, wrapText } from "../../web/js/node_text.js";

const measure = (text) => text.length * 6; // 6 px a character

test("wrapText breaks at spaces to the width and keeps the caption lines apart", () => {
  assert.deepEqual(wrapText(measure, "aaa bbb ccc", 42), ["aaa bbb", "ccc"]);
  assert.deepEqual(wrapText(measure, "one\ntwo three", 60), ["one", "two three"]);
  assert.deepEqual(wrapText(measure, "averyveryverylongword x", 12), ["averyveryverylongword", "x"]);
  assert.deepEqual(wrapText(measure, "", 60), [""]);
});

test("limitLines keeps the first lines and says how many were left out", () => {
  assert.deepEqual(limitLines(["a", "b"], 5), ["a", "b"]);
  assert.deepEqual(limitLines(["a", "b", "c", "d"], 3), ["a", "b", "… (2 more lines)"]);
  assert.deepEqual(limitLines(["a", "b"], Infinity), ["a", "b"]);
});

test("textFromMessage reads ComfyUI's ui text output and ignores other outputs", () => {
  assert.equal(textFromMessage({ text: ["12 caption(s) by tagger\nimage/0.png: sks, 1girl"] }), "12 caption(s) by tagger\nimage/0.png: sks, 1girl");
  assert.equal(textFromMessage({ text: ["a", "b"] }), "a\nb");
  assert.equal(textFromMessage({ images: [] }), null);
  assert.equal(textFromMessage(undefined), null);
});

test("drawTextBlock writes under the widgets and grows the node to fit", () => {
  const drawn = [];
  const ctx = { save() {}, restore() {}, measureText: (t) => ({ width: measure(t) }), fillText: (t, x, y) => drawn.push([t, x, y]) };
  const node = { size: [80, 50], widgets: [{ last_y: 10 }, { y: 40 }], setSize(size) { this.size = size; } };
  assert.equal(widgetsBottom(node), 68);
  const lines = drawTextBlock(node, ctx, "aaa bbb ccc\nddd", { maxLines: 10 });
  assert.equal(lines, 3);
  assert.deepEqual(drawn.map(([t, , y]) => [t, y]), [["aaa bbb", 68], ["ccc", 84], ["ddd", 100]]);
  assert.deepEqual(node.size, [80, 68 + 3 * 16 + 6]);
});
