/**
 * Typed-array checks that work across JavaScript realms. Native backends (tfjs-node) hand back
 * arrays created in Node's main realm; under a vm context (jest, the Temporal sandbox) `instanceof
 * Float32Array` is then false for a perfectly good Float32Array.
 */
export function isFloat32Array(value: unknown): value is Float32Array {
  return Object.prototype.toString.call(value) === '[object Float32Array]';
}

export function isInt32Array(value: unknown): value is Int32Array {
  return Object.prototype.toString.call(value) === '[object Int32Array]';
}
