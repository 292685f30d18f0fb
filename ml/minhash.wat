;; MinHash over 32-bit shingle hashes with WebAssembly SIMD (ml/minhashWasm.ts loads it; compiled
;; by `npm run build:wasm` into ml/minhashWasm.bytes.ts, and test/quality.test.ts checks that the two
;; agree). For every permutation p, out[p] = min over the shingles x of (a[p] * x + b[p]) mod 2^32,
;; unsigned: what minhashOfNormalized computes in JavaScript, four lanes to a vector and sixteen
;; permutations to a pass over the shingles.
;;
;; Memory: a[0..1024) at byte 0, b[0..1024) at 4096, out[0..1024) at 8192, the shingles from 12288.
(module
  (memory (export "memory") 1)
  (func (export "minhash") (param $count i32) (param $blocks i32)
    (local $block i32) (local $at i32) (local $i i32) (local $end i32) (local $x v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $m0 v128) (local $m1 v128) (local $m2 v128) (local $m3 v128)
    (local.set $end (i32.add (i32.const 12288) (i32.shl (local.get $count) (i32.const 2))))
    (block $blocks_done
      (loop $blocks_loop
        (br_if $blocks_done (i32.ge_u (local.get $block) (local.get $blocks)))
        ;; Sixteen permutations: 64 bytes of a, of b and of out.
        (local.set $at (i32.shl (local.get $block) (i32.const 6)))
        (local.set $a0 (v128.load offset=0 (local.get $at)))
        (local.set $a1 (v128.load offset=16 (local.get $at)))
        (local.set $a2 (v128.load offset=32 (local.get $at)))
        (local.set $a3 (v128.load offset=48 (local.get $at)))
        (local.set $b0 (v128.load offset=4096 (local.get $at)))
        (local.set $b1 (v128.load offset=4112 (local.get $at)))
        (local.set $b2 (v128.load offset=4128 (local.get $at)))
        (local.set $b3 (v128.load offset=4144 (local.get $at)))
        (local.set $m0 (v128.const i32x4 -1 -1 -1 -1))
        (local.set $m1 (v128.const i32x4 -1 -1 -1 -1))
        (local.set $m2 (v128.const i32x4 -1 -1 -1 -1))
        (local.set $m3 (v128.const i32x4 -1 -1 -1 -1))
        (local.set $i (i32.const 12288))
        (block $shingles_done
          (loop $shingles
            (br_if $shingles_done (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $x (v128.load32_splat (local.get $i)))
            (local.set $m0 (i32x4.min_u (local.get $m0) (i32x4.add (i32x4.mul (local.get $x) (local.get $a0)) (local.get $b0))))
            (local.set $m1 (i32x4.min_u (local.get $m1) (i32x4.add (i32x4.mul (local.get $x) (local.get $a1)) (local.get $b1))))
            (local.set $m2 (i32x4.min_u (local.get $m2) (i32x4.add (i32x4.mul (local.get $x) (local.get $a2)) (local.get $b2))))
            (local.set $m3 (i32x4.min_u (local.get $m3) (i32x4.add (i32x4.mul (local.get $x) (local.get $a3)) (local.get $b3))))
            (local.set $i (i32.add (local.get $i) (i32.const 4)))
            (br $shingles)))
        (v128.store offset=8192 (local.get $at) (local.get $m0))
        (v128.store offset=8208 (local.get $at) (local.get $m1))
        (v128.store offset=8224 (local.get $at) (local.get $m2))
        (v128.store offset=8240 (local.get $at) (local.get $m3))
        (local.set $block (i32.add (local.get $block) (i32.const 1)))
        (br $blocks_loop)))))
