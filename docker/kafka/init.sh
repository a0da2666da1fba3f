#!/usr/bin/env bash
# The one-shot `kafka-init` service (apache/kafka:3.8.0 image, as the super user ess-admin):
# brings the bundled Kafka to what ESS's security model needs, then exits 0. The ESS roles
# start only after it succeeded. Every step is idempotent, and every `docker compose up`
# runs it again:
#
#   1. users: a SCRAM-SHA-512 credential for every principal in acls.conf, password from
#      SCRAM_PASSWORD_<USER> (docker/.env). An existing user gets the current password, so
#      editing docker/.env and re-running `docker compose up -d` rotates role passwords.
#      (ess-admin itself was created when the storage was formatted: see start.sh.)
#   2. topics: those of topics.conf (the registry, schemas/topics.py) under ESS_TOPIC_PREFIX,
#      created when missing; then every one is checked: a wrong partition count stops here
#      (one partition for commands and state is a safety property, not housekeeping), and
#      retention.ms / cleanup.policy are set where they differ.
#   3. ACLs: one `kafka-acls.sh --add` per row of acls.conf (adding an existing ACL changes
#      nothing). Rows removed from acls.conf are NOT revoked: remove those ACLs by hand
#      (kafka-acls.sh --remove), since a revocation window would stop running roles.
#
# --dry-run prints the commands of steps 1-3 (passwords masked, every topic assumed missing)
# instead of running them; tests/test_deployment.py checks the ACLs it would create.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/kafka/lib.sh
source "$here/lib.sh"

dry_run=false
[[ ${1-} == --dry-run ]] && dry_run=true

bin=${ESS_KAFKA_BIN:-/opt/kafka/bin}
bootstrap=${ESS_KAFKA_BOOTSTRAP:-kafka:9092}
prefix=${ESS_TOPIC_PREFIX:-ess}
topics_file=$here/topics.conf
acls_file=$here/acls.conf
[[ $prefix =~ ^[A-Za-z0-9._-]+$ ]] || die "ESS_TOPIC_PREFIX=$prefix is not a legal topic prefix"

umask 077
client=$(mktemp /tmp/ess-admin.XXXXXX)
trap 'rm -f "$client"' EXIT
admin_var=$(password_var ess-admin)
check_password "$admin_var"
admin_client_config "${!admin_var}" >"$client"
admin=(--bootstrap-server "$bootstrap" --command-config "$client")

# run TOOL ARGS...: a Kafka tool as ess-admin (printed instead under --dry-run).
run() {
    local tool=$1
    shift
    if $dry_run; then
        printf '%q ' "$tool" "$@"
        echo
    else
        "$bin/$tool" "${admin[@]}" "$@"
    fi
}

# ------------------------------------------------------------------ broker reachable

if ! $dry_run; then
    for attempt in $(seq 1 30); do
        if out=$("$bin/kafka-broker-api-versions.sh" "${admin[@]}" 2>&1); then
            break
        fi
        ((attempt < 30)) || die "cannot reach Kafka at $bootstrap as ess-admin (is" \
            "KAFKA_ADMIN_PASSWORD the one the broker was formatted with?): ${out: -400}"
        sleep 2
    done
fi

# ------------------------------------------------------------------ 1. users

mapfile -t principals < <(conf_rows "$acls_file" | awk '{ print $1 }' | sort -u)
for user in "${principals[@]}"; do
    [[ $user != ess-admin ]] || die "acls.conf: ess-admin is the super user, it needs no ACL"
    var=$(password_var "$user")
    check_password "$var"
    password=${!var}
    $dry_run && password='***'
    run kafka-configs.sh --alter --entity-type users --entity-name "$user" \
        --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]"
done

# ------------------------------------------------------------------ 2. topics

existing=""
$dry_run || existing=$("$bin/kafka-topics.sh" "${admin[@]}" --list)
while read -r suffix partitions retention cleanup; do
    topic="$prefix.$suffix"
    grep -qxF "$topic" <<<"$existing" && continue
    run kafka-topics.sh --create --if-not-exists --topic "$topic" --partitions "$partitions" \
        --config "retention.ms=$retention" --config "cleanup.policy=$cleanup"
done < <(conf_rows "$topics_file")

if ! $dry_run; then
    described=$("$bin/kafka-topics.sh" "${admin[@]}" --describe --exclude-internal)
    while read -r suffix partitions retention cleanup; do
        topic="$prefix.$suffix"
        # Summary line: Topic: <name>\tTopicId: ..\tPartitionCount: N\t...\tConfigs: a=b,c=d
        summary=$(awk -F'\t' -v want="Topic: $topic" '$1 == want {
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^PartitionCount: /) count = substr($i, 17)
                if ($i ~ /^Configs: /) configs = substr($i, 10)
            }
            print count "|" configs
        }' <<<"$described")
        [[ -n $summary ]] || die "topic $topic does not exist after creation"
        count=${summary%%|*}
        configs=",${summary#*|},"
        [[ $count == "$partitions" ]] || die "topic $topic has $count partitions but ESS" \
            "requires $partitions (schemas/topics.py). It was not created by ESS; delete it" \
            "(kafka-topics.sh --delete) or use another ESS_TOPIC_PREFIX."
        if [[ $configs != *",retention.ms=$retention,"* || $configs != *",cleanup.policy=$cleanup,"* ]]; then
            run kafka-configs.sh --alter --entity-type topics --entity-name "$topic" \
                --add-config "retention.ms=$retention,cleanup.policy=$cleanup"
        fi
    done < <(conf_rows "$topics_file")
fi

# ------------------------------------------------------------------ 3. ACLs

while read -r principal operations resource pattern names extra; do
    [[ -z ${extra-} ]] || die "acls.conf: extra column in the row of $principal: $extra"
    args=(--add --allow-principal "User:$principal")
    IFS=, read -ra ops <<<"$operations"
    for op in "${ops[@]}"; do
        args+=(--operation "$op")
    done
    case $resource in
    topic | group)
        args+=(--resource-pattern-type "$pattern")
        IFS=, read -ra resolved <<<"${names//\{prefix\}/$prefix}"
        for name in "${resolved[@]}"; do
            args+=("--$resource" "$name")
        done
        ;;
    cluster)
        [[ $pattern == literal ]] || die "acls.conf: the cluster resource is literal"
        args+=(--cluster)
        ;;
    *) die "acls.conf: unknown resource type $resource" ;;
    esac
    if $dry_run; then
        run kafka-acls.sh "${args[@]}"
    else
        run kafka-acls.sh "${args[@]}" >/dev/null
    fi
done < <(conf_rows "$acls_file")

if ! $dry_run; then
    echo "ess-kafka-init: users ${principals[*]}; topics of prefix $prefix; ACLs now in force:"
    "$bin/kafka-acls.sh" "${admin[@]}" --list
fi
