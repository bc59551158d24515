# NixOS module for the HakuRiver SSH proxy (services.hakuriver.sshProxy).
#
# The proxy answers `REQUEST_TUNNEL <task_id>` by looking the VPS task up in HakuRiver's
# SQLite database (read-only) and relaying the connection to the task's sshd.
# By default systemd owns the listening sockets (socket activation), so the daemon starts
# on the first connection and restarts never refuse clients. The flake's
# nixosModules.default imports this file and sets `package`.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    literalExpression
    optional
    optionals
    optionalAttrs
    types
    ;

  cfg = config.services.hakuriver.sshProxy;
  opt = "services.hakuriver.sshProxy";
  settingsFormat = pkgs.formats.toml { };

  tlsEnabled = cfg.tls.mode != "off";
  # TLS on its own port (a second socket unit) or on the main listeners.
  tlsOwnPort = tlsEnabled && cfg.tls.port != null;
  tlsOnMain = tlsEnabled && cfg.tls.port == null;

  adminEnabled = cfg.admin.enable;
  adminListen = withPort cfg.admin.port cfg.admin.listenAddress;
  # What the daemon's own check accepts without allow_remote: 127.0.0.0/8 and ::1
  # (an IPv4-mapped loopback counts too).
  isLoopback =
    addr:
    lib.hasPrefix "127." addr
    || addr == "[::1]"
    || lib.hasPrefix "[::ffff:127." (lib.toLower addr)
    || addr == "[0:0:0:0:0:0:0:1]";

  # "0.0.0.0" -> "0.0.0.0:8002", "[::]" -> "[::]:8002"
  withPort = port: addr: "${addr}:${toString port}";
  stripBrackets = addr: lib.removeSuffix "]" (lib.removePrefix "[" addr);

  # TOML has no null: unset optional keys are left out so the daemon's defaults apply.
  # Without socket activation the admin address goes into the file (the daemon binds it);
  # with it, the hakuriver-ssh-proxy-admin socket hands the descriptor over instead.
  renderedSettings = lib.recursiveUpdate (lib.filterAttrsRecursive (_: v: v != null) cfg.settings) (
    optionalAttrs (adminEnabled && !cfg.socketActivation) {
      ssh_proxy.admin.listen = [ adminListen ];
    }
  );
  configFile = settingsFormat.generate "hakuriver-ssh-proxy.toml" renderedSettings;

  # systemd expands ${CREDENTIALS_DIRECTORY}; these two arguments must therefore not go
  # through escapeSystemdExecArgs (which would turn "$" into "$$").
  credentialArgs = lib.optionalString (cfg.tls.mode == "files") (
    " --tls-cert \${CREDENTIALS_DIRECTORY}/tls-cert --tls-key \${CREDENTIALS_DIRECTORY}/tls-key"
  );

  # Without socket activation the daemon binds: the first address is the main listener
  # (--bind/--port), the others are extra listeners of the same transport.
  bindArgs =
    let
      main = builtins.head cfg.listenAddresses;
      rest = builtins.tail cfg.listenAddresses;
      plainOrTlsListen = if tlsOnMain then "--tls-listen" else "--listen";
    in
    [
      "--bind"
      (stripBrackets main)
      "--port"
      (toString cfg.port)
    ]
    ++ lib.concatMap (a: [
      plainOrTlsListen
      (withPort cfg.port a)
    ]) rest
    ++ optional tlsOnMain "--tls"
    ++ lib.concatMap (a: [
      "--tls-listen"
      (withPort cfg.tls.port a)
    ]) (if tlsOwnPort then cfg.listenAddresses else [ ]);

  execArgs = [
    "serve"
    "--config"
    "${configFile}"
  ] ++ optionals (!cfg.socketActivation) bindArgs;

  # Keys the module derives from its own options; setting them in `settings` as well
  # would silently disagree with the socket units and flags.
  managedSettings = [
    [ "ssh_proxy" "listen" ]
    [ "ssh_proxy" "tls" "enable" ]
    [ "ssh_proxy" "tls" "listen" ]
    [ "ssh_proxy" "tls" "cert_file" ]
    [ "ssh_proxy" "tls" "key_file" ]
    [ "ssh_proxy" "admin" "listen" ]
  ];

  socketDefaults = {
    Accept = false;
    # With both 0.0.0.0 and [::] listed (the default) the IPv6 socket must not also
    # claim IPv4, or the second bind fails with EADDRINUSE.
    BindIPv6Only = "ipv6-only";
    Backlog = 1024;
    NoDelay = true;
  };

  secsType = types.either types.ints.unsigned types.float;
in
{
  options.services.hakuriver.sshProxy = {
    enable = mkEnableOption "the HakuRiver SSH proxy, which routes `REQUEST_TUNNEL <task_id>` to a VPS task's sshd";

    package = mkPackageOption pkgs "hakuriver-ssh-proxy" { };

    listenAddresses = mkOption {
      type = types.listOf types.str;
      default = [
        "0.0.0.0"
        "[::]"
      ];
      example = [
        "192.0.2.10"
        "[2001:db8::10]"
      ];
      description = ''
        Addresses the proxy listens on, all with {option}`port`. IPv6 addresses are written
        in brackets. IPv6 sockets are bound IPv6-only so that `0.0.0.0` and `[::]` can be
        listed together.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 8002;
      description = ''
        TCP port of the (plain) proxy listeners. HakuRiver clients read it from
        `[network] host_ssh_proxy_port` in their own config, which should agree.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open {option}`port` (and {option}`tls.port` if set) in the firewall.";
    };

    socketActivation = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let systemd own the listening sockets (`hakuriver-ssh-proxy.socket`, and
        `hakuriver-ssh-proxy-tls.socket` for {option}`tls.port`): the daemon starts on the
        first connection and connections queue during restarts. When false the service is
        started at boot and binds the sockets itself.
      '';
    };

    tls = {
      mode = mkOption {
        type = types.enum [
          "off"
          "self-signed"
          "files"
        ];
        default = "off";
        description = ''
          TLS for `hakuriver-ssh --tls` clients (HakuRiver's own client speaks plain only).
          `self-signed`: the daemon generates a certificate once in its state directory
          (`/var/lib/private/hakuriver-ssh-proxy`); clients pin it, see
          `hakuriver-ssh-proxy fingerprint`. `files`: {option}`tls.certFile` and
          {option}`tls.keyFile`, handed over with `LoadCredential=`.
        '';
      };

      port = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 8003;
        description = ''
          Serve TLS on this port (on every address of {option}`listenAddresses`) in
          addition to plain on {option}`port`. `null` with TLS enabled: the listeners on
          {option}`port` speak TLS only.
        '';
      };

      certFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/proxy.example.org/fullchain.pem";
        description = ''
          PEM certificate chain for `tls.mode = "files"`. A path string outside the Nix store,
          read by systemd (as root) when the service starts; after renewal restart the
          service (e.g. `security.acme.certs.<name>.reloadServices`), since credentials
          are copied at start.
        '';
      };

      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/proxy.example.org/key.pem";
        description = ''
          PEM private key for `tls.mode = "files"`. A path string, never a Nix path, so the
          key does not end up in the world-readable store.
        '';
      };
    };

    admin = {
      enable = mkEnableOption ''
        the admin HTTP listener: `GET /metrics` (Prometheus), `/healthz` (the process serves)
        and `/readyz` (listeners up, database readable, not draining; 503 with a one-line
        reason otherwise). Plain HTTP without authentication, separate from the tunnel ports.
        With {option}`socketActivation` it is the socket unit `hakuriver-ssh-proxy-admin.socket`
        (descriptor name `admin`), otherwise `[ssh_proxy.admin] listen` in the config file
      '';

      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "[::1]";
        description = ''
          Address of the admin listener; IPv6 in brackets. Anything but loopback
          (`127.0.0.0/8`, `[::1]`) also needs
          {option}`settings.ssh_proxy.admin.allow_remote` = true, since the endpoints have no
          authentication (the daemon refuses to start otherwise, and so does this module).
        '';
      };

      port = mkOption {
        type = types.port;
        default = 9102;
        description = "TCP port of the admin listener.";
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Open {option}`admin.port` in the firewall, e.g. for a Prometheus server on another
          machine (with a non-loopback {option}`admin.listenAddress`).
        '';
      };
    };

    databaseGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "hakuriver";
      description = ''
        Supplementary group that may read HakuRiver's database (for a DB locked down to e.g.
        `0640 root:hakuriver` in a `0750` directory). The group must exist. `PrivateUsers=`
        is switched off with it, because a private user namespace maps only the service's
        own UID/GID. `null`: the DB must be readable by others, which it is with HakuRiver's
        defaults (created by root with umask 022). For a WAL-mode DB the `-wal`/`-shm` files
        must exist and be readable (they do while HakuRiver's host holds the DB open, with
        the DB file's mode), since the proxy cannot create them in a read-only directory.
      '';
    };

    bindReadOnlyPaths = mkOption {
      type = types.listOf types.str;
      default = [ (dirOf cfg.settings.database.db_file) ];
      defaultText = literalExpression "[ (dirOf config.${opt}.settings.database.db_file) ]";
      example = [ "/root/.hakuriver:/var/lib/hakuriver" ];
      description = ''
        `BindReadOnlyPaths=` of the service. The default states the read-only dependency on
        the DB's directory and fails the start clearly if it is missing. `SOURCE:DEST`
        exposes a directory that `ProtectHome=` would hide (set
        {option}`settings.database.db_file` to the path under DEST).
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        The proxy's config file: HakuRiver's host `config.toml` format plus the optional
        `[ssh_proxy]` section. Other HakuRiver keys are accepted and ignored by the proxy.
        `ssh_proxy.listen`, `ssh_proxy.tls.{enable,listen,cert_file,key_file}` and
        `ssh_proxy.admin.listen` are set through {option}`listenAddresses`, {option}`tls`
        and {option}`admin` instead.
      '';
      example = literalExpression ''
        {
          database.db_file = "/srv/hakuriver/hakuriver.db";
          ssh_proxy.idle_timeout_secs = 3600;
          ssh_proxy.tls.names = [ "proxy.example.org" ];
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          network = mkOption {
            default = { };
            description = "`[network]` section (shared with HakuRiver).";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                host_bind_ip = mkOption {
                  type = types.str;
                  default = stripBrackets (builtins.head (cfg.listenAddresses ++ [ "0.0.0.0" ]));
                  defaultText = literalExpression "the first of listenAddresses, without brackets";
                  description = ''
                    Main listener address. Used by `hakuriver-ssh-proxy health`/`check`; the
                    service itself gets its sockets from systemd or from
                    {option}`listenAddresses`.
                  '';
                };
                host_ssh_proxy_port = mkOption {
                  type = types.port;
                  default = cfg.port;
                  defaultText = literalExpression "config.${opt}.port";
                  description = "Main listener port, kept equal to {option}`port`.";
                };
              };
            };
          };

          database = mkOption {
            default = { };
            description = "`[database]` section (shared with HakuRiver).";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options.db_file = mkOption {
                type = types.str;
                default = "/var/lib/hakuriver/hakuriver.db";
                description = "HakuRiver's SQLite database, opened read-only.";
              };
            };
          };

          ssh_proxy = mkOption {
            default = { };
            description = "`[ssh_proxy]` section; unknown keys make the daemon refuse to start.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                request_timeout_secs = mkOption {
                  type = types.nullOr secsType;
                  default = null;
                  example = 10;
                  description = "Time a client has to send its request line (daemon default 10, as HakuRiver).";
                };
                connect_timeout_secs = mkOption {
                  type = types.nullOr secsType;
                  default = null;
                  example = 15;
                  description = "Timeout for connecting to the runner's VPS port (daemon default 15).";
                };
                tls_handshake_timeout_secs = mkOption {
                  type = types.nullOr secsType;
                  default = null;
                  example = 10;
                  description = "Timeout for a client's TLS handshake (daemon default 10).";
                };
                shutdown_grace_secs = mkOption {
                  type = types.nullOr secsType;
                  default = null;
                  example = 30;
                  description = ''
                    How long open tunnels may drain after SIGTERM (daemon default 30). The unit's
                    `TimeoutStopSec=` follows it with 15 s headroom.
                  '';
                };
                idle_timeout_secs = mkOption {
                  type = types.nullOr secsType;
                  default = null;
                  example = 3600;
                  description = "Close tunnels idle this long; 0 = never (daemon default 0).";
                };
                log_format = mkOption {
                  type = types.nullOr (
                    types.enum [
                      "auto"
                      "text"
                      "json"
                      "journald"
                    ]
                  );
                  default = null;
                  description = "Log format; `auto` (the default) picks journald under systemd.";
                };
                max_connections = mkOption {
                  type = types.nullOr types.ints.positive;
                  default = null;
                  example = 10000;
                  description = "Concurrent connections (daemon default 10000). Raises `LimitNOFILE=` and `FileDescriptorStoreMax=` (7 per tunnel) to match.";
                };
                fd_store = mkOption {
                  type = types.nullOr (
                    types.enum [
                      "auto"
                      "on"
                      "off"
                    ]
                  );
                  default = null;
                  description = ''
                    Keep open plain tunnels in systemd's file-descriptor store, so a restart or
                    crash of the daemon drops none (daemon default `auto`: on when systemd sets
                    `$FDSTORE`, which it does from the unit's `FileDescriptorStoreMax=` since
                    systemd 254). `off` also sets `FileDescriptorStoreMax=0`; SIGTERM then
                    drains open tunnels for `shutdown_grace_secs`.
                  '';
                };
                max_connections_per_ip = mkOption {
                  type = types.nullOr types.ints.positive;
                  default = null;
                  example = 256;
                  description = "Concurrent connections per client address (daemon default 256).";
                };
                allow_listing = mkOption {
                  type = types.nullOr types.bool;
                  default = null;
                  description = ''
                    Answer task names and `hakuriver-ssh list` without
                    {option}`settings.ssh_proxy.auth.mode` (daemon default false): every client then
                    sees every VPS task, as every client may reach every VPS without auth.
                  '';
                };
                trusted_proxies = mkOption {
                  type = types.nullOr (types.listOf types.str);
                  default = null;
                  example = [
                    "10.0.0.0/8"
                    "192.0.2.7"
                  ];
                  description = ''
                    Load balancers (addresses or CIDR networks) whose connections start with a
                    PROXY protocol v1 or v2 header, e.g. HAProxy with `send-proxy-v2` (daemon
                    default: none). From these peers the header is required and the client
                    address it carries is the one the limits, the allowlist, the logs and the
                    metrics see; from any other peer a PROXY header is a bad request. On TLS
                    listeners the header comes before the ClientHello. See docs/replicas.md.
                  '';
                };
                admin = mkOption {
                  default = { };
                  description = "`[ssh_proxy.admin]`; `listen` comes from {option}`admin`.";
                  type = types.submodule {
                    freeformType = settingsFormat.type;
                    options.allow_remote = mkOption {
                      type = types.nullOr types.bool;
                      default = null;
                      description = ''
                        Allow a non-loopback {option}`admin.listenAddress` (daemon default false).
                        `/metrics`, `/healthz` and `/readyz` have no authentication: expose them
                        only to a network you trust (a Prometheus server, a load balancer's
                        health checks).
                      '';
                    };
                  };
                };
                auth = mkOption {
                  default = { };
                  description = "`[ssh_proxy.auth]`: who may open which tunnel.";
                  type = types.submodule {
                    freeformType = settingsFormat.type;
                    options.mode = mkOption {
                      type = types.nullOr (
                        types.enum [
                          "off"
                          "kohakuriver"
                        ]
                      );
                      default = null;
                      example = "kohakuriver";
                      description = ''
                        `off` (the daemon default): whoever reaches the port reaches every VPS, as
                        HakuRiver's own proxy. `kohakuriver`: clients send a KohakuRiver 1.0 API token
                        (inside TLS) and reach only the VPS tasks their user owns or is assigned to,
                        or any VPS for operators and admins; the database must be KohakuRiver 1.0's.
                        Needs TLS on every listener ({option}`tls.mode` not `off` and
                        {option}`tls.port` null), since a token must never cross plain TCP.
                      '';
                    };
                  };
                };
                tls = mkOption {
                  default = { };
                  description = "`[ssh_proxy.tls]`; enable/listen/cert_file/key_file come from {option}`tls`.";
                  type = types.submodule {
                    freeformType = settingsFormat.type;
                    options.names = mkOption {
                      type = types.nullOr (types.listOf types.str);
                      default = null;
                      example = [ "proxy.example.org" ];
                      description = ''
                        Subject alternative names of the self-signed certificate (daemon default:
                        hostname, localhost, 127.0.0.1, ::1). Only read when the certificate is
                        first generated.
                      '';
                    };
                  };
                };
              };
            };
          };
        };
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions =
        [
          {
            assertion = cfg.listenAddresses != [ ];
            message = "${opt}.listenAddresses must not be empty: the proxy would have no listener${lib.optionalString cfg.socketActivation " and the socket unit no ListenStream="}.";
          }
          {
            assertion = cfg.port != 0;
            message = "${opt}.port must not be 0: clients need a fixed port${lib.optionalString cfg.socketActivation ", and systemd cannot socket-activate port 0"}.";
          }
          {
            assertion = cfg.tls.port != 0;
            message = "${opt}.tls.port must not be 0: clients need a fixed port.";
          }
          {
            assertion = cfg.tls.port == null || cfg.tls.port != cfg.port;
            message = "${opt}.tls.port must differ from ${opt}.port; leave tls.port null to serve TLS only on ${opt}.port.";
          }
          {
            assertion = cfg.settings.ssh_proxy.auth.mode != "kohakuriver" || tlsOnMain;
            message = "${opt}.settings.ssh_proxy.auth.mode = \"kohakuriver\" needs TLS on every listener: set ${opt}.tls.mode (not \"off\") and leave ${opt}.tls.port null, so no plain port is served (API tokens must never cross plain TCP).";
          }
          {
            assertion = !adminEnabled || isLoopback cfg.admin.listenAddress || cfg.settings.ssh_proxy.admin.allow_remote == true;
            message = "${opt}.admin.listenAddress = \"${cfg.admin.listenAddress}\" is not a loopback address: set ${opt}.settings.ssh_proxy.admin.allow_remote = true to expose /metrics, /healthz and /readyz (they have no authentication), or listen on 127.0.0.1.";
          }
          {
            assertion = !adminEnabled || (!(lib.hasInfix ":" cfg.admin.listenAddress) || (lib.hasPrefix "[" cfg.admin.listenAddress && lib.hasSuffix "]" cfg.admin.listenAddress));
            message = "${opt}.admin.listenAddress: IPv6 address \"${cfg.admin.listenAddress}\" must be written in brackets, e.g. \"[${cfg.admin.listenAddress}]\".";
          }
          {
            assertion = !adminEnabled || (cfg.admin.port != 0 && cfg.admin.port != cfg.port && cfg.admin.port != cfg.tls.port);
            message = "${opt}.admin.port must not be 0 and must differ from ${opt}.port and ${opt}.tls.port: the admin listener is separate from the tunnel ports.";
          }
          {
            assertion = cfg.tls.port == null || tlsEnabled;
            message = "${opt}.tls.port is set but ${opt}.tls.mode is \"off\".";
          }
          {
            assertion = cfg.tls.mode != "files" || (cfg.tls.certFile != null && cfg.tls.keyFile != null);
            message = "${opt}.tls.mode = \"files\" needs both ${opt}.tls.certFile and ${opt}.tls.keyFile.";
          }
          {
            assertion = cfg.tls.mode == "files" || (cfg.tls.certFile == null && cfg.tls.keyFile == null);
            message = "${opt}.tls.certFile/keyFile are only used with ${opt}.tls.mode = \"files\" (it is \"${cfg.tls.mode}\").";
          }
          {
            assertion = cfg.tls.keyFile == null || !lib.hasPrefix builtins.storeDir cfg.tls.keyFile;
            message = "${opt}.tls.keyFile must not be in the Nix store (world-readable); give a path string to a file outside it.";
          }
        ]
        ++ map (a: {
          assertion = !(lib.hasInfix ":" a) || (lib.hasPrefix "[" a && lib.hasSuffix "]" a);
          message = "${opt}.listenAddresses: IPv6 address \"${a}\" must be written in brackets, e.g. \"[${a}]\".";
        }) cfg.listenAddresses
        ++ map (path: {
          assertion = !(lib.hasAttrByPath path cfg.settings);
          message = "${opt}.settings.${lib.concatStringsSep "." path} is derived from ${opt}.listenAddresses/tls.*/admin.*; set those instead.";
        }) managedSettings;

      environment.systemPackages = [ cfg.package ];
      # The same file the service reads, for `hakuriver-ssh-proxy check|health|fingerprint
      # --config /etc/hakuriver-ssh-proxy/config.toml`.
      environment.etc."hakuriver-ssh-proxy/config.toml".source = configFile;

      networking.firewall.allowedTCPPorts =
        optionals cfg.openFirewall ([ cfg.port ] ++ optional tlsOwnPort cfg.tls.port)
        ++ optional (adminEnabled && cfg.admin.openFirewall) cfg.admin.port;

      systemd.services.hakuriver-ssh-proxy = {
        description = "HakuRiver SSH proxy";
        documentation = [ "https://github.com/hakuriver-ssh/hakuriver-ssh" ];
        after = [ "network.target" ];
        serviceConfig =
          {
            Type = "notify";
            ExecStart = "${lib.getExe cfg.package} ${utils.escapeSystemdExecArgs execArgs}${credentialArgs}";
            # SIGHUP re-reads the TLS certificate (RELOADING=1 ... READY=1).
            ExecReload = "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
            Restart = "on-failure";
            # The daemon sends WATCHDOG=1 every WatchdogSec/2.
            WatchdogSec = "30s";
            TimeoutStopSec =
              let
                grace = cfg.settings.ssh_proxy.shutdown_grace_secs;
              in
              "${toString ((if grace == null then 30 else builtins.ceil grace) + 15)}s";
            # systemd's fd store keeps open plain tunnels across restarts: 7 descriptors a
            # tunnel (two sockets, two pipes, a memfd record). A restart hands them over at
            # once; `systemctl stop` ends them (the store is closed).
            FileDescriptorStoreMax =
              let
                max = cfg.settings.ssh_proxy.max_connections;
              in
              if cfg.settings.ssh_proxy.fd_store == "off" then 0 else 7 * (if max == null then 10000 else max);
            # Two descriptors per tunnel.
            LimitNOFILE =
              let
                max = cfg.settings.ssh_proxy.max_connections;
              in
              lib.max 65536 (2 * (if max == null then 10000 else max) + 1024);

            DynamicUser = true;
            # Self-signed certificate and key (written 0600), found via $STATE_DIRECTORY.
            StateDirectory = "hakuriver-ssh-proxy";
            StateDirectoryMode = "0700";
            UMask = "0077";

            BindReadOnlyPaths = cfg.bindReadOnlyPaths;

            CapabilityBoundingSet = "";
            AmbientCapabilities = "";
            NoNewPrivileges = true;
            PrivateDevices = true;
            PrivateTmp = true;
            PrivateUsers = cfg.databaseGroup == null;
            ProtectSystem = "strict";
            ProtectHome = true;
            ProtectClock = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectControlGroups = true;
            ProtectProc = "invisible";
            ProcSubset = "pid";
            # AF_UNIX: sd_notify and journald.
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
            ];
            SystemCallErrorNumber = "EPERM";
          }
          // optionalAttrs (cfg.databaseGroup != null) {
            SupplementaryGroups = [ cfg.databaseGroup ];
          }
          // optionalAttrs (cfg.tls.mode == "files") {
            LoadCredential = [
              "tls-cert:${cfg.tls.certFile}"
              "tls-key:${cfg.tls.keyFile}"
            ];
          }
          // optionalAttrs (!cfg.socketActivation && (cfg.port < 1024 || (tlsOwnPort && cfg.tls.port < 1024) || (adminEnabled && cfg.admin.port < 1024))) {
            # Binding itself to a privileged port needs exactly this capability.
            CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
            AmbientCapabilities = "CAP_NET_BIND_SERVICE";
          };
      };
    }

    (mkIf cfg.socketActivation {
      systemd.sockets.hakuriver-ssh-proxy = {
        description = "HakuRiver SSH proxy listener (${if tlsOnMain then "TLS" else "plain TCP"})";
        wantedBy = [ "sockets.target" ];
        listenStreams = map (withPort cfg.port) cfg.listenAddresses;
        # The daemon tells plain from TLS listeners by this name (LISTEN_FDNAMES).
        socketConfig = socketDefaults // {
          FileDescriptorName = if tlsOnMain then "tls" else "plain";
        };
      };

      # One FileDescriptorName per socket unit, so TLS on its own port is a second unit.
      # Service= makes it trigger the proxy; systemd passes the descriptors of every
      # socket unit that triggers a service, so one process serves both.
      systemd.sockets.hakuriver-ssh-proxy-tls = mkIf tlsOwnPort {
        description = "HakuRiver SSH proxy listener (TLS)";
        wantedBy = [ "sockets.target" ];
        listenStreams = map (withPort cfg.tls.port) cfg.listenAddresses;
        socketConfig = socketDefaults // {
          FileDescriptorName = "tls";
          Service = "hakuriver-ssh-proxy.service";
        };
      };

      # The admin listener, likewise a unit of its own; the daemon serves a descriptor
      # named "admin" as /metrics, /healthz and /readyz (and checks its address is
      # loopback unless allow_remote is set).
      systemd.sockets.hakuriver-ssh-proxy-admin = mkIf adminEnabled {
        description = "HakuRiver SSH proxy admin listener (metrics and health)";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ adminListen ];
        socketConfig = socketDefaults // {
          FileDescriptorName = "admin";
          Service = "hakuriver-ssh-proxy.service";
        };
      };

      systemd.services.hakuriver-ssh-proxy = {
        requires = [ "hakuriver-ssh-proxy.socket" ];
        after =
          [ "hakuriver-ssh-proxy.socket" ]
          ++ optional tlsOwnPort "hakuriver-ssh-proxy-tls.socket"
          ++ optional adminEnabled "hakuriver-ssh-proxy-admin.socket";
        wants =
          optional tlsOwnPort "hakuriver-ssh-proxy-tls.socket"
          ++ optional adminEnabled "hakuriver-ssh-proxy-admin.socket";
      };
    })

    (mkIf (!cfg.socketActivation) {
      systemd.services.hakuriver-ssh-proxy.wantedBy = [ "multi-user.target" ];
    })
  ]);

  meta.maintainers = [ ];
}
