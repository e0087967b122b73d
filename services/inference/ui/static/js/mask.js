// Trimap masks in the browser: PNG decode/encode of exact class values, colours, fractions.
//
// The page never lets a canvas encode or decode a mask: canvases may colour-manage, premultiply
// or widen grey to RGBA. A trimap PNG is read and written here byte for byte (8-bit greyscale,
// values 1 pet, 2 background, 3 border, the image's exact size), with the browser's own
// zlib (CompressionStream / DecompressionStream "deflate").

export const CLASSES = [
  { value: 1, name: "pet", colour: [230, 57, 70] },
  { value: 2, name: "background", colour: [69, 123, 157] },
  { value: 3, name: "border", colour: [255, 209, 102] },
];

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

let crcTable = null;
function crc32(bytes) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

async function pipe(bytes, stream) {
  const out = new Response(new Blob([bytes]).stream().pipeThrough(stream));
  return new Uint8Array(await out.arrayBuffer());
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** A mask (Uint8Array of values, row-major) as an 8-bit greyscale PNG, byte-exact. */
export async function encodeTrimapPng(values, width, height) {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`bad mask size ${width}x${height}`);
  }
  if (values.length !== width * height) {
    throw new Error(`mask has ${values.length} values, ${width}x${height} needs ${width * height}`);
  }
  for (let i = 0; i < values.length; i++) {
    if (values[i] < 1 || values[i] > 3) throw new Error(`mask value ${values[i]} is not 1, 2 or 3`);
  }
  const raw = new Uint8Array((width + 1) * height); // filter byte 0 (None) before each row
  for (let y = 0; y < height; y++) raw.set(values.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  const header = new Uint8Array(13);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8); // 8 bits, greyscale, deflate, no filter method, no interlace
  const idat = await pipe(raw, new CompressionStream("deflate"));
  const parts = [new Uint8Array(SIGNATURE), chunk("IHDR", header), chunk("IDAT", idat),
                 chunk("IEND", new Uint8Array(0))];
  const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { png.set(p, at); at += p.length; }
  return png;
}

function paeth(a, b, c) {
  const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** An 8-bit greyscale (or palette index) PNG, as the API serves masks, to its raw values. */
export async function decodeTrimapPng(bytes) {
  bytes = new Uint8Array(bytes);
  for (let i = 0; i < 8; i++) if (bytes[i] !== SIGNATURE[i]) throw new Error("not a PNG");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let width = 0, height = 0, at = 8;
  const idat = [];
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      const [depth, colourType, , , interlace] = data.subarray(8, 13);
      if (depth !== 8 || (colourType !== 0 && colourType !== 3) || interlace !== 0) {
        throw new Error("masks are 8-bit greyscale PNGs without interlacing");
      }
    } else if (type === "IDAT") {
      idat.push(data);
    } else if (type === "IEND") {
      break;
    }
    at += 12 + length;
  }
  const joined = new Uint8Array(idat.reduce((n, d) => n + d.length, 0));
  let j = 0;
  for (const d of idat) { joined.set(d, j); j += d.length; }
  const raw = await pipe(joined, new DecompressionStream("deflate"));
  if (raw.length < (width + 1) * height) throw new Error("truncated mask PNG");
  const values = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (width + 1)];
    const src = raw.subarray(y * (width + 1) + 1, (y + 1) * (width + 1));
    const row = values.subarray(y * width, (y + 1) * width);
    const up = y > 0 ? values.subarray((y - 1) * width, y * width) : new Uint8Array(width);
    for (let x = 0; x < width; x++) {
      const a = x > 0 ? row[x - 1] : 0, b = up[x], c = x > 0 ? up[x - 1] : 0;
      const pred = filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b
        : filter === 3 ? (a + b) >> 1 : filter === 4 ? paeth(a, b, c) : -1;
      if (pred < 0) throw new Error(`unknown PNG filter ${filter}`);
      row[x] = (src[x] + pred) & 0xff;
    }
  }
  return { width, height, values };
}

/** Share of pixels per class, by name. */
export function fractions(values) {
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < values.length; i++) counts[values[i] & 3]++;
  const total = values.length || 1;
  return Object.fromEntries(CLASSES.map((c) => [c.name, counts[c.value] / total]));
}

/** Share of pixels two masks of one size agree on. */
export function agreement(a, b) {
  if (a.length !== b.length) throw new Error("masks of different sizes");
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return a.length ? same / a.length : 1;
}

/** Paint a mask into RGBA pixels: class colours, opaque, hidden classes transparent. */
export function paint(values, rgba, visible) {
  const colours = [null, ...CLASSES.map((c) => c.colour)];
  for (let i = 0, p = 0; i < values.length; i++, p += 4) {
    const v = values[i];
    const colour = colours[v];
    if (colour && visible[v]) {
      rgba[p] = colour[0]; rgba[p + 1] = colour[1]; rgba[p + 2] = colour[2]; rgba[p + 3] = 255;
    } else {
      rgba[p + 3] = 0;
    }
  }
}
