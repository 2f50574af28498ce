#!/usr/bin/env bash
# Creates the secret files docker-compose.yml mounts (deploy/secrets/, or
# $BACKUP_PIPELINE_SECRETS_DIR), each readable by its owner only. Existing files are kept,
# so re-running never rotates a password behind a running database's back.
#
#   bash deploy/make-secrets.sh                 # random passwords, users admin/viewer
#   ADMIN_USER=alice VIEWER_USER=bob bash deploy/make-secrets.sh
#
# The generated web passwords are printed once; store them in your password manager.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BACKUP_PIPELINE_SECRETS_DIR:-deploy/secrets}
mkdir -p "$dir"
chmod 0700 "$dir"
# Files stay readable inside the containers (non-root users; compose bind-mounts secrets with
# their host mode); the 0700 directory keeps other host users out.
umask 022

random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
put() {  # put NAME CONTENT: write unless present
  if [ -e "$dir/$1" ]; then echo "keep    $dir/$1"; else printf '%s\n' "$2" > "$dir/$1"; echo "created $dir/$1"; fi
}

put dagster_pg_password "$(random)"
put app_db_password "$(random)"
put minio_root_user "backup-admin"
put minio_root_password "$(random)"
# Org secret: "<key id>:<base64 of 32 random bytes>" per line, newest last.
put org_secret "k1:$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
# Replace with the service-account key (or OAuth authorized-user JSON) for destination=google_drive.
put drive_credentials.json "{}"
rabbit_password=$(random)
put rabbitmq.conf "default_user = backup
default_pass = $rabbit_password"
if [ ! -e "$dir/celery_broker_url" ]; then
  pass=$(sed -n 's/^default_pass = //p' "$dir/rabbitmq.conf")
  put celery_broker_url "pyamqp://backup:$pass@rabbitmq:5672//"
fi

for role in admins viewers; do
  file="$dir/htpasswd_$role"
  [ -e "$file" ] && { echo "keep    $file"; continue; }
  if [ "$role" = admins ]; then user=${ADMIN_USER:-admin}; else user=${VIEWER_USER:-viewer}; fi
  password=$(random)
  # apr1 (openssl passwd) is understood by nginx everywhere. The password goes on stdin: as an
  # argument it would show in `ps`, and a random one starting with '-' (token_urlsafe can) was
  # read as an option, which left an empty hash in the file.
  hash=$(printf '%s\n' "$password" | openssl passwd -apr1 -stdin)
  case "$hash" in '$apr1$'*) ;; *) echo "make-secrets: openssl passwd gave no apr1 hash for $role" >&2; exit 1 ;; esac
  printf '%s:%s\n' "$user" "$hash" > "$file"
  echo "created $file — user '$user', password: $password"
done
