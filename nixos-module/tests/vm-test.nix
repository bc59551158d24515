# NixOS VM test of the proxy module and the client, end to end.
#
#   nix build .#checks.x86_64-linux.vm-test -L                      # run it
#   nix run .#checks.x86_64-linux.vm-test.driverInteractive          # poke at it
#
# host:   services.hakuriver.sshProxy (socket activation, plain on 8002 + self-signed TLS
#         on 8003, the admin listener on 127.0.0.1:9102, DB readable through a
#         supplementary group), a SQLite DB with
#         HakuRiver 0.3.0's schema in WAL mode kept open by a stand-in for HakuRiver's
#         host, and the system sshd on 2222 playing the VPS container's sshd (the runner
#         is 127.0.0.1, so the proxy relays to it over loopback).
# client: hakuriver-ssh + programs.hakuriver-ssh (ssh hakuriver-<id>), pinning the
#         proxy's self-signed certificate by the fingerprint the host prints.
{ pkgs, self }:

let
  inherit (import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs) snakeOilPrivateKey snakeOilPublicKey;

  dbDir = "/var/lib/hakuriver";
  db = "${dbDir}/hakuriver.db";
  marker = "vps-reached-through-the-proxy";

  # HakuRiver 0.3.0's tables as peewee creates them (`sqlite3 DB .schema`).
  schema = pkgs.writeText "hakuriver-schema.sql" ''
    CREATE TABLE IF NOT EXISTS "node" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "last_heartbeat" DATETIME NOT NULL, "status" VARCHAR(255) NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "memory_total_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
    CREATE TABLE IF NOT EXISTS "task" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL, "assigned_node_id" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME, "assignment_suspicion_count" INTEGER NOT NULL, "required_memory_bytes" INTEGER, "systemd_unit_name" VARCHAR(255), "target_numa_node_id" INTEGER, "batch_id" INTEGER, "ssh_port" INTEGER, FOREIGN KEY ("assigned_node_id") REFERENCES "node" ("hostname"));
    CREATE INDEX "task_assigned_node_id" ON "task" ("assigned_node_id");
    CREATE INDEX "task_batch_id" ON "task" ("batch_id");
    PRAGMA journal_mode=WAL;
    INSERT INTO node (hostname, url, total_cores, last_heartbeat, status)
      VALUES ('runner1', 'http://127.0.0.1:8001', 4, '2025-01-01 00:00:00.000000', 'online');
  '';

  # Stands in for HakuRiver's host process: keeps the DB open (so -wal/-shm exist, as
  # they do on a live Host) and commits the task rows into the WAL with checkpointing
  # off. Task 1 therefore exists only in the -wal file: finding it proves the sandboxed,
  # read-only proxy reads WAL-mode databases.
  writer = pkgs.writeText "hakuriver-db-writer.py" ''
    import signal
    import sqlite3

    db = sqlite3.connect("${db}", isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    row = ("", "[]", "{}", 1, "[]", "runner1", "", "", "2025-01-01 00:00:00.000000", 0)
    sql = ("INSERT INTO task (task_id, task_type, status, ssh_port, command, arguments, env_vars,"
           " required_cores, required_gpus, assigned_node_id, stdout_path, stderr_path,"
           " submitted_at, assignment_suspicion_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    db.execute(sql, (1, "vps", "running", 2222) + row)
    db.execute(sql, (2, "command", "running", None) + row)
    open("/run/hakuriver-db-writer/ready", "w").close()
    signal.pause()
  '';
in
pkgs.testers.runNixOSTest {
  name = "hakuriver-ssh-proxy";

  nodes.host =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.hakuriver.sshProxy = {
        enable = true;
        openFirewall = true;
        tls = {
          mode = "self-signed";
          port = 8003;
        };
        # The DB below is 0640 root:hakuriver in a 0750 directory.
        databaseGroup = "hakuriver";
        settings.ssh_proxy.tls.names = [ "host" ];
        # /metrics, /healthz, /readyz on 127.0.0.1:9102 (hakuriver-ssh-proxy-admin.socket).
        admin.enable = true;
      };
      users.groups.hakuriver = { };

      # The "VPS": sshd on 2222, reachable from the client only through the proxy.
      services.openssh = {
        enable = true;
        ports = [ 2222 ];
        openFirewall = false;
        settings.PermitRootLogin = "prohibit-password";
      };
      users.users.root.openssh.authorizedKeys.keys = [ snakeOilPublicKey ];
      systemd.tmpfiles.rules = [ "f /root/vps-marker 0644 root root - ${marker}" ];

      systemd.services.hakuriver-db-setup = {
        description = "Create a HakuRiver 0.3.0 database (WAL mode)";
        wantedBy = [ "multi-user.target" ];
        before = [ "hakuriver-ssh-proxy.service" ];
        path = [ pkgs.sqlite ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          install -d -m 0750 -o root -g hakuriver ${dbDir}
          rm -f ${db} ${db}-wal ${db}-shm
          sqlite3 ${db} < ${schema}
          chgrp hakuriver ${db}
          chmod 0640 ${db}
        '';
      };

      systemd.services.hakuriver-db-writer = {
        description = "Stand-in for HakuRiver's host holding the DB open";
        wantedBy = [ "multi-user.target" ];
        requires = [ "hakuriver-db-setup.service" ];
        after = [ "hakuriver-db-setup.service" ];
        serviceConfig = {
          ExecStart = "${pkgs.python3.interpreter} ${writer}";
          RuntimeDirectory = "hakuriver-db-writer";
        };
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.sqlite
        pkgs.util-linux
      ];
    };

  nodes.client =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.client ];
      programs.hakuriver-ssh.enable = true;
      environment.systemPackages = [ pkgs.openssl ];
    };

  testScript = ''
    import re

    start_all()

    host.wait_for_unit("hakuriver-db-writer.service")
    host.wait_for_file("/run/hakuriver-db-writer/ready")
    host.wait_for_unit("hakuriver-ssh-proxy.socket")
    host.wait_for_unit("hakuriver-ssh-proxy-tls.socket")
    host.wait_for_unit("hakuriver-ssh-proxy-admin.socket")
    host.wait_for_unit("sshd.service")
    client.wait_for_unit("multi-user.target")

    client.succeed(
        "install -Dm600 ${snakeOilPrivateKey} /root/.ssh/id_snakeoil",
        # The VPS's host key is unknown to the client; the tunnel, not the key, is under test.
        "printf 'Host *\\n  IdentityFile /root/.ssh/id_snakeoil\\n"
        "  StrictHostKeyChecking no\\n  UserKnownHostsFile /dev/null\\n' > /root/.ssh/config",
    )

    with subtest("socket activation: the proxy is not running before the first connection"):
        host.fail("systemctl is-active --quiet hakuriver-ssh-proxy.service")
        host.succeed("ss -Hltn 'sport = :8002' | grep -q LISTEN")
        host.succeed("ss -Hltn 'sport = :8003' | grep -q LISTEN")
        host.succeed("ss -Hltn 'src 127.0.0.1 and sport = :9102' | grep -q LISTEN")

    with subtest("the DB is in WAL mode and task 1 lives only in the -wal file"):
        host.succeed("test \"$(sqlite3 ${db} 'PRAGMA journal_mode')\" = wal")
        host.succeed("test -s ${db}-wal")
        host.succeed("test \"$(stat -c '%a %G' ${db}-shm)\" = '640 hakuriver'")

    with subtest("plain tunnel: the first connection starts the proxy"):
        out = client.succeed(
            "hakuriver-ssh --host host --proxy-port 8002 --no-tls 1 -- cat /root/vps-marker"
        )
        assert out.strip() == "${marker}", f"unexpected remote output: {out!r}"
        host.succeed("systemctl is-active --quiet hakuriver-ssh-proxy.service")
        host.succeed("hakuriver-ssh-proxy health --addr 127.0.0.1:8002")

    with subtest("admin listener: /readyz, /healthz and /metrics after the tunnel"):
        host.succeed("test \"$(curl -sf http://127.0.0.1:9102/readyz)\" = ready")
        host.succeed("curl -sf http://127.0.0.1:9102/healthz")
        metrics = host.succeed("curl -sf http://127.0.0.1:9102/metrics")
        assert 'hakuriver_ssh_proxy_tunnels_opened_total{transport="plain"} 1' in metrics, metrics
        # Loopback only: the client cannot reach it.
        client.fail("curl -s --max-time 5 http://host:9102/healthz")

    with subtest("proxy errors reach the user with exit status 255"):
        status, out = client.execute(
            "hakuriver-ssh --host host --proxy-port 8002 --no-tls 2 -- true 2>&1"
        )
        assert status == 255, f"exit {status}: {out!r}"
        assert "Task 2 is not a VPS task." in out, out

    with subtest("journald has the tunnel with its fields"):
        host.wait_until_succeeds(
            "journalctl -u hakuriver-ssh-proxy.service TASK_ID=1 -o cat | grep -q .", timeout=30
        )

    with subtest("the DB is read-only inside the sandbox"):
        pid = host.succeed("systemctl show -P MainPID hakuriver-ssh-proxy.service").strip()
        host.succeed(
            f"nsenter -t {pid} -m findmnt -no OPTIONS --target ${dbDir} | grep -Eq '(^|,)ro(,|$)'"
        )
        # Whatever DB files the daemon holds open are opened O_RDONLY.
        for line in host.succeed(f"find /proc/{pid}/fd -type l -printf '%f %l\\n'").splitlines():
            fd, target = line.split(" ", 1)
            if target.startswith("${db}"):
                flags = host.succeed(f"awk '/^flags:/ {{print $2}}' /proc/{pid}/fdinfo/{fd}")
                assert int(flags, 8) & 3 == 0, f"{target} open with flags {flags.strip()}"
        # The stand-in writer still owns the DB: nothing was checkpointed or rewritten.
        host.succeed("test -s ${db}-wal")

    with subtest("TLS: the pinned fingerprint is the served certificate"):
        fp = host.succeed("hakuriver-ssh-proxy fingerprint --config /etc/hakuriver-ssh-proxy/config.toml").strip()
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp), f"bad fingerprint line: {fp!r}"
        served = client.succeed(
            "openssl s_client -connect host:8003 </dev/null 2>/dev/null"
            " | openssl x509 -noout -fingerprint -sha256"
        )
        served_hex = served.strip().split("=", 1)[1].replace(":", "").lower()
        assert "sha256:" + served_hex == fp, f"served {served_hex}, proxy says {fp}"

        client.succeed(
            "install -Dm600 /dev/stdin /root/.hakuriver/config.toml <<EOF\n"
            "[network]\n"
            'host_reachable_address = "host"\n'
            "host_ssh_proxy_port = 8003\n"
            "[ssh_client.tls]\n"
            "enable = true\n"
            f'fingerprints = ["{fp}"]\n'
            "EOF"
        )

    with subtest("TLS tunnel with the pin, by `hakuriver-ssh <id> -- <cmd>`"):
        out = client.succeed("hakuriver-ssh 1 -- cat /root/vps-marker")
        assert out.strip() == "${marker}", f"unexpected remote output: {out!r}"

    with subtest("TLS tunnel as ProxyCommand: plain `ssh hakuriver-1`"):
        out = client.succeed("ssh hakuriver-1 cat /root/vps-marker")
        assert out.strip() == "${marker}", f"unexpected remote output: {out!r}"

    with subtest("a wrong pin is refused"):
        client.succeed(
            "sed -E 's/sha256:[0-9a-f]{64}/sha256:" + "0" * 64 + "/' /root/.hakuriver/config.toml > /root/bad-pin.toml"
        )
        status, out = client.execute("hakuriver-ssh --config /root/bad-pin.toml 1 -- true 2>&1")
        assert status == 255, f"exit {status}: {out!r}"

    with subtest("reload (SIGHUP) keeps serving"):
        host.succeed("systemctl reload hakuriver-ssh-proxy.service")
        host.succeed("systemctl is-active --quiet hakuriver-ssh-proxy.service")
        out = client.succeed("hakuriver-ssh 1 -- cat /root/vps-marker")
        assert out.strip() == "${marker}", f"unexpected remote output: {out!r}"
  '';
}
