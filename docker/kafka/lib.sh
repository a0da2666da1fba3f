# shellcheck shell=bash
# Shell functions shared by docker/kafka/start.sh and docker/kafka/init.sh (bash; sourcing
# this file has no side effects). tests/test_deployment.py sources it too.

die() {
    echo "ess-kafka: ERROR: $*" >&2
    exit 1
}

warn() {
    echo "ess-kafka: WARNING: $*" >&2
}

# password_var USER: the environment variable holding USER's SCRAM password
# (ess-command -> SCRAM_PASSWORD_ESS_COMMAND). compose.yaml fills them from docker/.env.
password_var() {
    local upper=${1^^}
    echo "SCRAM_PASSWORD_${upper//[^A-Z0-9]/_}"
}

# check_password VAR: VAR must hold a password the Kafka tools can carry unquoted: SCRAM
# arguments of kafka-storage.sh and kafka-configs.sh are split on ',', '=' and whitespace, and
# JAAS configs quote with '"'. Letters, digits and . _ ~ - only (`openssl rand -hex 24`).
check_password() {
    local var=$1
    local value=${!1-}
    [[ -n $value ]] || die "$var is not set: define it in docker/.env (see docker/.env.example)"
    [[ $value =~ ^[A-Za-z0-9._~-]+$ ]] ||
        die "$var may only contain letters, digits and . _ ~ - (e.g. openssl rand -hex 24)"
    [[ $value != change-me* ]] ||
        warn "$var still holds the placeholder of docker/.env.example: change it"
    return 0
}

# server_properties: the broker configuration that the apache/kafka image's launcher derives
# from the KAFKA_* environment (KafkaDockerWrapper.getServerConfigsFromEnv in Kafka 3.8):
# KAFKA_ dropped, lower case, '_' -> '.', then '...' -> '-' and '..' -> '_'.
server_properties() {
    local name key
    for name in $(compgen -e); do
        [[ $name == KAFKA_* ]] || continue
        case $name in
        KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_LOG4J_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | \
            KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_ROOT_LOGLEVEL | \
            KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL | KAFKA_JMX_HOSTNAME)
            continue
            ;;
        esac
        key=${name//KAFKA_/}
        key=${key,,}
        key=${key//_/.}
        key=${key//.../-}
        key=${key//../_}
        printf '%s=%s\n' "$key" "${!name}"
    done
}

# admin_client_config PASSWORD: client properties (--command-config) of the ess-admin user.
admin_client_config() {
    printf '%s\n' \
        'security.protocol=SASL_PLAINTEXT' \
        'sasl.mechanism=SCRAM-SHA-512' \
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"ess-admin\" password=\"$1\";"
}

# conf_rows FILE: the rows of one of the .conf tables here, comments and blank lines dropped.
conf_rows() {
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$1"
}
