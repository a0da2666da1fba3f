#!/usr/bin/env bash
# Entry point of the `kafka` service (apache/kafka:3.8.0): the image's own launcher
# (/etc/kafka/docker/run), preceded on a new data volume by formatting the storage WITH the
# ess-admin SCRAM user.
#
# Why: every client listener of this broker requires SASL/SCRAM-SHA-512, and in KRaft mode
# SCRAM credentials live in the cluster metadata. The first one cannot be created through the
# broker (nobody could authenticate to create it), so it goes into the bootstrap metadata
# when the storage is formatted: `kafka-storage.sh format --add-scram` (KIP-900, Kafka 3.5+).
# The image's launcher formats without it, so this script formats first, with the very
# settings the launcher derives from the KAFKA_* environment (lib.sh, server_properties);
# the launcher then finds the directory "already formatted" and goes on as on any restart.
# The other users are created by the kafka-init service, as ess-admin (init.sh).
#
# A data volume formatted by an earlier, unauthenticated ESS compose file has no ess-admin:
# this script refuses it (see the message) instead of starting a broker nobody can use.
#
# Also writes /tmp/ess-admin.properties (ess-admin's client settings, mode 0600) for the
# healthcheck and for operators: docker compose exec kafka /opt/kafka/bin/kafka-acls.sh
# --bootstrap-server kafka:9092 --command-config /tmp/ess-admin.properties --list
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/kafka/lib.sh
source "$here/lib.sh"

bin=/opt/kafka/bin
data=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
marker="$data/.ess-admin-scram"
admin_var=$(password_var ess-admin)
check_password "$admin_var"
admin_password=${!admin_var}
umask 077

if [[ ! -e $data/meta.properties ]]; then
    [[ -n ${CLUSTER_ID-} ]] || die "CLUSTER_ID is not set"
    config=$(mktemp /tmp/ess-format.XXXXXX)
    server_properties >"$config"
    echo "ess-kafka: formatting $data with the ess-admin SCRAM-SHA-512 user"
    "$bin/kafka-storage.sh" format --cluster-id "$CLUSTER_ID" --config "$config" \
        --add-scram "SCRAM-SHA-512=[name=ess-admin,password=$admin_password]"
    rm -f "$config"
    touch "$marker"
elif [[ ! -e $marker ]]; then
    die "$data was formatted without the ess-admin SCRAM user (by an ESS compose file from" \
        "before SASL): no client could authenticate. Recreate the Kafka volume, which DELETES" \
        "all Kafka data including the state log: docker compose down && docker volume rm" \
        "ess_kafka-data && docker compose up -d"
fi

admin_client_config "$admin_password" >/tmp/ess-admin.properties
umask 022 # the image's own default for everything the broker writes
exec /etc/kafka/docker/run
