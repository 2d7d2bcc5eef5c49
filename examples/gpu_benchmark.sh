#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one command, for a lent GPU (an H200, at most 5 minutes, no internet):
#
#   bash examples/gpu_benchmark.sh OUT_DIR           # the GPU: the paper's shapes, bf16 autocast, SDPA attention
#   bash examples/gpu_benchmark.sh OUT_DIR --tiny    # the same parts on the CPU with tiny models (tests run this)
#
# Parts, in this order (each one Python process of examples/benchmark.py under `timeout`):
#   steps_vit_s2_32, steps_vit_b16_224        the MAE, MIMIR, clean and PGD-3 AT steps, eager (no compile)
#   e2e_cifar10, e2e_imagenet                 end to end from files: cifar10/pretrain_vit_small and
#                                             imagenet/pretrain_vit_base at two worker counts each
#   compiled_vit_s2_32, compiled_vit_b16_224  the MAE, MIMIR and PGD-3 AT steps under torch.compile (last: slowest
#                                             to start, least certain to fit)
# Each part writes OUT_DIR/<part>.json, <part>.md (its tables) and <part>.log; OUT_DIR/tables.md gathers the tables
# and lists the parts skipped (out of time, timed out, failed), which the script also prints at the end.
# Environment: PYTHON (default python3), BUDGET_S (seconds for all parts; default 270 on the GPU).
set -u

out=${1:?usage: bash examples/gpu_benchmark.sh OUT_DIR [--tiny]}
mode=${2:-gpu}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"

if [ "$mode" = "--tiny" ]; then
    budget=${BUDGET_S:-600}; cap=150; least=1
    common=(--device cpu --dtype fp32 --tiny)
    vit_s=(--preset vit-small-patch2-32 --batch_size 2 --warmup 0 --repeats 1)
    vit_b=(--preset vit-base-patch16-224 --batch_size 2 --warmup 0 --repeats 1)
    cifar=(--batch_size 5 --warmup 1 --steps 1 --workers 1)
    imagenet=(--batch_size 5 --warmup 1 --steps 1 --workers 1)
    backend=(--compile_backend eager)
elif [ "$mode" = "gpu" ]; then
    budget=${BUDGET_S:-270}; cap=0; least=20
    common=(--device cuda --dtype bf16)
    vit_s=(--preset vit-small-patch2-32 --batch_size 256 --warmup 3 --repeats 5)
    vit_b=(--preset vit-base-patch16-224 --batch_size 128 --warmup 3 --repeats 5)
    # steps well above the workers (each worker makes whole batches), so the rate is the steady state's
    cifar=(--batch_size 128 --warmup 2 --steps 30 --workers 2 8)
    imagenet=(--batch_size 64 --warmup 4 --steps 28 --workers 8 15)
    backend=(--compile_backend inductor)
else
    echo "unknown option $mode (only --tiny)" >&2
    exit 2
fi

missing=$("$python" -c "import importlib.util as u
print(' '.join(m for m in ('torch', 'transformers', 'datasets', 'yaml', 'PIL') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
    echo "$python lacks: $missing (carry their wheels); nothing measured" | tee "$out/tables.md" >&2
    exit 1
fi

start=$SECONDS
skipped=()

# part NAME SECONDS ARGS...: one benchmark run, given at most SECONDS (and never past the budget).
part() {
    local name=$1 limit=$2 left status
    shift 2
    left=$((budget - (SECONDS - start)))
    [ "$cap" -gt 0 ] && limit=$cap
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt "$least" ]; then
        skipped+=("$name: not started, ${left} s of the ${budget} s budget left")
        return
    fi
    echo "== $name (at most $limit s; $((SECONDS - start)) s spent)"
    timeout --kill-after=10 "$limit" "$python" "$root/examples/benchmark.py" "${common[@]}" "$@" \
        --output "$out/$name.json" --tables "$out/$name.md" >"$out/$name.log" 2>&1
    status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        skipped+=("$name: stopped at its $limit s limit (see $name.log)")
    elif [ "$status" -ne 0 ]; then
        skipped+=("$name: failed with exit status $status (see $name.log)")
    fi
}

part steps_vit_s2_32 40 "${vit_s[@]}" --attn_implementation sdpa
part steps_vit_b16_224 40 "${vit_b[@]}" --attn_implementation sdpa
part e2e_cifar10 50 --end_to_end --cases cifar10/pretrain_vit_small "${cifar[@]}"
part e2e_imagenet 60 --end_to_end --cases imagenet/pretrain_vit_base "${imagenet[@]}"
part compiled_vit_s2_32 90 "${vit_s[@]}" --attn_implementation sdpa --compile "${backend[@]}" --step_cases a b d
part compiled_vit_b16_224 90 "${vit_b[@]}" --attn_implementation sdpa --compile "${backend[@]}" --step_cases a b d

{
    echo "# examples/gpu_benchmark.sh ($mode), $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - start)) s"
    for name in steps_vit_s2_32 steps_vit_b16_224 e2e_cifar10 e2e_imagenet compiled_vit_s2_32 compiled_vit_b16_224; do
        if [ -s "$out/$name.md" ]; then
            printf '\n## %s\n\n' "$name"
            cat "$out/$name.md"
        fi
    done
    printf '\n## Skipped\n\n'
    if [ ${#skipped[@]} -eq 0 ]; then echo "nothing"; fi
    for line in "${skipped[@]}"; do echo "- $line"; done
} >"$out/tables.md"

echo "done in $((SECONDS - start)) s; tables in $out/tables.md"
if [ ${#skipped[@]} -gt 0 ]; then
    printf 'skipped:\n'
    printf '  %s\n' "${skipped[@]}"
    exit 3
fi
