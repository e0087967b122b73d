// The mask over its image, and the brush that corrects it.
//
// Two stacked canvases at the image's own resolution (CSS scales them to the screen): the image
// below, the mask above in class colours. The overlay's pixels are opaque class colours (or
// transparent for hidden classes); its opacity is CSS, so the pixels always say which class is
// where. Strokes edit `values` (the trimap) and never the served mask, which the eraser restores
// from and "reset" returns to. Each stroke is one undo step.

import { paint } from "./mask.js";

const MAX_UNDO = 50;

export class MaskEditor {
  constructor(base, overlay, { onChange = () => {} } = {}) {
    this.base = base;
    this.overlay = overlay;
    this.onChange = onChange;
    this.width = 0;
    this.height = 0;
    this.served = null;
    this.values = null;
    this.visible = [false, true, true, true];
    this.tool = "brush";
    this.paintClass = 1;
    this.size = 12;
    this.undoStack = [];
    this.redoStack = [];
    this.cursor = null;
    this._stroke = null;
    this._frame = 0;
    overlay.addEventListener("pointerdown", (e) => this._down(e));
    overlay.addEventListener("pointermove", (e) => this._move(e));
    overlay.addEventListener("pointerup", () => this._up());
    overlay.addEventListener("pointercancel", () => this._up());
    overlay.addEventListener("keydown", (e) => this._key(e));
  }

  /** Show `image` (an ImageBitmap) with the mask the API served for it. */
  load(image, mask) {
    this.width = mask.width;
    this.height = mask.height;
    for (const canvas of [this.base, this.overlay]) {
      canvas.width = mask.width;
      canvas.height = mask.height;
    }
    this.base.getContext("2d").drawImage(image, 0, 0, mask.width, mask.height);
    this.served = mask.values;
    this.values = mask.values.slice();
    this.undoStack = [];
    this.redoStack = [];
    this.cursor = { x: mask.width >> 1, y: mask.height >> 1 };
    this.render();
  }

  get edited() {
    if (!this.values) return false;
    for (let i = 0; i < this.values.length; i++) if (this.values[i] !== this.served[i]) return true;
    return false;
  }

  render() {
    if (!this.values) return;
    const ctx = this.overlay.getContext("2d");
    const pixels = ctx.createImageData(this.width, this.height);
    paint(this.values, pixels.data, this.visible);
    ctx.putImageData(pixels, 0, 0);
    this.onChange(this);
  }

  _scheduleRender() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => { this._frame = 0; this.render(); });
  }

  setVisible(value, shown) {
    this.visible[value] = shown;
    this.render();
  }

  _snapshot() {
    this.undoStack.push(this.values.slice());
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.values);
    this.values = this.undoStack.pop();
    this.render();
    return true;
  }

  redo() {
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.values);
    this.values = this.redoStack.pop();
    this.render();
    return true;
  }

  reset() {
    if (!this.values || !this.edited) return;
    this._snapshot();
    this.values = this.served.slice();
    this.render();
  }

  /** One dab of the current tool: a disc of diameter `size` (mask pixels) at (cx, cy). */
  dab(cx, cy) {
    const r = Math.max(0.5, this.size / 2);
    const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(this.width - 1, Math.ceil(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(this.height - 1, Math.ceil(cy + r));
    const r2 = r * r;
    const { values, served, paintClass } = this;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy > r2) continue;
        const i = y * this.width + x;
        if (this.tool === "brush") values[i] = paintClass;
        // the eraser takes the chosen class away: back to what the model served there
        else if (values[i] === paintClass) values[i] = served[i];
      }
    }
  }

  /** A straight stroke from a to b, dabs half a radius apart. */
  line(a, b) {
    const steps = Math.max(1, Math.ceil(Math.hypot(b.x - a.x, b.y - a.y) / Math.max(1, this.size / 4)));
    for (let s = 0; s <= steps; s++) {
      this.dab(a.x + ((b.x - a.x) * s) / steps, a.y + ((b.y - a.y) * s) / steps);
    }
  }

  _point(e) {
    const rect = this.overlay.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) * this.width) / rect.width,
      y: ((e.clientY - rect.top) * this.height) / rect.height,
    };
  }

  _down(e) {
    if (!this.values || e.button > 0) return;
    e.preventDefault();
    this.overlay.setPointerCapture?.(e.pointerId);
    this._snapshot();
    const p = this._point(e);
    this._stroke = p;
    this.dab(p.x, p.y);
    this._scheduleRender();
  }

  _move(e) {
    if (!this._stroke) return;
    const p = this._point(e);
    this.line(this._stroke, p);
    this._stroke = p;
    this._scheduleRender();
  }

  _up() {
    if (!this._stroke) return;
    this._stroke = null;
    this.render();
  }

  // Keyboard painting on the focused canvas: arrows move a cursor (a brush width per press),
  // Space or Enter dabs there; Shift+arrow paints while moving.
  _key(e) {
    if (!this.values) return;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const step = Math.max(1, this.size);
    if (e.key in moves) {
      e.preventDefault();
      const [dx, dy] = moves[e.key];
      const from = { ...this.cursor };
      this.cursor.x = Math.min(this.width - 1, Math.max(0, this.cursor.x + dx * step));
      this.cursor.y = Math.min(this.height - 1, Math.max(0, this.cursor.y + dy * step));
      if (e.shiftKey) {
        this._snapshot();
        this.line(from, this.cursor);
        this.render();
      }
      this.overlay.dataset.cursor = `${Math.round(this.cursor.x)},${Math.round(this.cursor.y)}`;
    } else if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      this._snapshot();
      this.dab(this.cursor.x, this.cursor.y);
      this.render();
    }
  }
}
