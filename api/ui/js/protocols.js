// The evaluation protocols' facts (GET /v1/protocols): what each needs, whether its result has
// an accuracy, the backbones it takes and the keys of its result's extra. Pages choose what to
// offer from these facts, never from a protocol's name.

/** Those whose results have top-1 (and top-5): what a leaderboard can rank. */
export function withAccuracy(protocols) {
  return protocols.filter((p) => p.accuracy === true);
}

/** Whether `protocol` evaluates a checkpoint of this backbone ("any", or a family such as "vit"). */
export function takesBackbone(protocol, backbone) {
  return protocol.backbone === "any" || String(backbone || "").startsWith(protocol.backbone);
}

/** Whether a result of `protocol` carries every one of `keys` in its extra. */
export function hasExtra(protocol, keys) {
  return keys.every((key) => key in (protocol.extra || {}));
}
