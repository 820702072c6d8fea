#!/usr/bin/env bash
# Wait until an image-similarity InferenceService serves its current revision:
#   scripts/wait_ready.sh NAMESPACE NAME [TIMEOUT_S]   (default 1800 s; KUBECTL=kubectl)
# The InferenceService's Ready is not enough on its own (issue 18): KServe combines only
# PredictorReady and IngressReady, and IngressReady is True at once for a cluster-local
# InferenceService, so a crash-looping transformer shows Ready; right after an upgrade it
# still reflects the old pods. So: both Deployments' rollouts first, then TransformerReady,
# then Ready. `rollout status` is retried: it gives up at the Deployment's progress deadline
# (600 s, ProgressDeadlineExceeded), which a first start that fetches weights can pass while
# it is still making progress; a Deployment KServe has not created yet is retried too.
# docs/deploy.md runs the same commands; scripts/kind_test.sh exports it as WAIT_READY.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 NAMESPACE NAME [TIMEOUT_S]" >&2
    exit 2
fi
ns="$1" name="$2" timeout_s="${3:-1800}"
KUBECTL="${KUBECTL:-kubectl}"
retry_s="${WAIT_READY_RETRY_S:-10}"
deadline=$((SECONDS + timeout_s))
left() { local l=$((deadline - SECONDS)); echo $((l > 1 ? l : 1)); }

for c in predictor transformer; do
    until "$KUBECTL" -n "$ns" rollout status "deployment/$name-$c" --timeout="$(left)s"; do
        if ((SECONDS >= deadline)); then
            echo "wait_ready: deployment/$name-$c not rolled out within $timeout_s s; see docs/deploy.md Troubleshooting" >&2
            exit 1
        fi
        echo "wait_ready: deployment/$name-$c not rolled out yet (a first start may pass the 600 s progress deadline); retrying" >&2
        sleep "$retry_s"
    done
done
# kubectl wait only trusts conditions of the current generation (status.observedGeneration).
# KServe v0.20 was seen (the cluster lab, a replicas-only upgrade) to leave observedGeneration
# one behind, every condition True, until some other event made it reconcile again: then the
# waits below never return. So once the rollouts are done, give it a minute, then touch an
# annotation (metadata only: no rollout, no new generation) so that the controller looks again.
gen_lag() {
    local g o
    g=$("$KUBECTL" -n "$ns" get "inferenceservice/$name" -o jsonpath='{.metadata.generation}')
    o=$("$KUBECTL" -n "$ns" get "inferenceservice/$name" -o jsonpath='{.status.observedGeneration}')
    [[ -n $g && "${o:-0}" -lt "$g" ]]
}
nudge_at=$((SECONDS + ${WAIT_READY_NUDGE_S:-60}))
while gen_lag; do
    if ((SECONDS >= deadline)); then
        echo "wait_ready: inferenceservice/$name: KServe has not observed its current generation within $timeout_s s" >&2
        exit 1
    fi
    if ((SECONDS >= nudge_at)); then
        echo "wait_ready: inferenceservice/$name: status.observedGeneration lags its generation with the rollouts done; annotating it so that KServe reconciles again" >&2
        "$KUBECTL" -n "$ns" annotate "inferenceservice/$name" --overwrite \
            "image-similarity.dev/reconcile-nudge=$(date +%s)" >/dev/null
        nudge_at=$((SECONDS + 60))
    fi
    sleep 2
done
"$KUBECTL" -n "$ns" wait --for=condition=TransformerReady "inferenceservice/$name" --timeout="$(left)s"
"$KUBECTL" -n "$ns" wait --for=condition=Ready "inferenceservice/$name" --timeout="$(left)s"
echo "wait_ready: inferenceservice/$name in $ns is ready"
