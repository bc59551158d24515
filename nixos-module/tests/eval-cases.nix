# Cases for the offline module evaluation (tests/nix/check.sh runs them through
# nix-eval-module.sh). Each case sets options, then asserts on the generated units.
{ lib }:
let
  svc = config: config.systemd.services.hakuriver-ssh-proxy;
  sock = config: config.systemd.sockets.hakuriver-ssh-proxy;
  sc = config: (svc config).serviceConfig;
  check = assertion: message: { inherit assertion message; };
  enable = {
    services.hakuriver.sshProxy.enable = true;
  };
  # A module assertion whose message starts with `prefix` must have fired.
  fired =
    failed: prefix:
    check (builtins.any (lib.hasPrefix prefix) failed) "expected a module assertion starting with \"${prefix}\", got ${builtins.toJSON failed}";
  hardening = config: [
    (check ((sc config).Type == "notify") "Type=notify")
    (check ((sc config).Restart == "on-failure") "Restart=on-failure")
    (check ((sc config).WatchdogSec == "30s") "WatchdogSec=30s")
    (check ((sc config).DynamicUser == true) "DynamicUser")
    (check ((sc config).StateDirectory == "hakuriver-ssh-proxy") "StateDirectory")
    (check ((sc config).UMask == "0077") "UMask")
    (check ((sc config).CapabilityBoundingSet == "") "no capabilities")
    (check ((sc config).ProtectSystem == "strict") "ProtectSystem=strict")
    (check ((sc config).ProtectProc == "invisible") "ProtectProc")
    (check ((sc config).ProcSubset == "pid") "ProcSubset")
    (check ((sc config).MemoryDenyWriteExecute == true) "MemoryDenyWriteExecute")
    (check ((sc config).NoNewPrivileges == true) "NoNewPrivileges")
    (check (
      (sc config).RestrictAddressFamilies == [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
      ]
    ) "RestrictAddressFamilies")
    (check (
      (sc config).SystemCallFilter == [
        "@system-service"
        "~@privileged"
      ]
    ) "SystemCallFilter")
    (check (builtins.all (k: (sc config).${k} == true) [
      "PrivateDevices"
      "PrivateTmp"
      "ProtectHome"
      "ProtectClock"
      "ProtectHostname"
      "ProtectKernelLogs"
      "ProtectKernelModules"
      "ProtectKernelTunables"
      "ProtectControlGroups"
      "RestrictNamespaces"
      "RestrictRealtime"
      "RestrictSUIDSGID"
      "LockPersonality"
    ]) "boolean hardening options")
  ];
in
{
  cases = {
    disabled = {
      checks =
        { config, ... }:
        [
          (check (!(config.systemd.services ? hakuriver-ssh-proxy)) "no service when disabled")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy)) "no socket when disabled")
          (check (config.networking.firewall.allowedTCPPorts == [ ]) "no firewall change when disabled")
        ];
    };

    enabled-defaults = {
      modules = [ enable ];
      checks =
        { config, ... }:
        let
          s = svc config;
        in
        hardening config
        ++ [
          (check (
            (sock config).listenStreams == [
              "0.0.0.0:8002"
              "[::]:8002"
            ]
          ) "socket listens on 0.0.0.0:8002 and [::]:8002")
          (check ((sock config).socketConfig.FileDescriptorName == "plain") "fd name plain")
          (check ((sock config).socketConfig.BindIPv6Only == "ipv6-only") "IPv6 socket is v6-only")
          (check ((sock config).wantedBy == [ "sockets.target" ]) "socket wantedBy sockets.target")
          (check (s.requires == [ "hakuriver-ssh-proxy.socket" ]) "service requires the socket")
          (check (builtins.elem "hakuriver-ssh-proxy.socket" s.after) "service after the socket")
          (check (s.wantedBy == [ ]) "socket-activated service is not started at boot")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-tls)) "no TLS socket by default")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-admin)) "no admin socket by default")
          (check (
            builtins.match "/nix/store/[^ ]*/bin/hakuriver-ssh-proxy \"serve\" \"--config\" \"/nix/store/[^ ]*-hakuriver-ssh-proxy.toml\"" s.serviceConfig.ExecStart != null
          ) "ExecStart is `serve --config <store file>` only, got ${s.serviceConfig.ExecStart}")
          (check (
            lib.hasSuffix "/bin/kill -HUP $MAINPID" s.serviceConfig.ExecReload
          ) "ExecReload sends SIGHUP")
          (check (s.serviceConfig.PrivateUsers == true) "PrivateUsers without a DB group")
          (check (!(s.serviceConfig ? SupplementaryGroups)) "no supplementary group by default")
          (check (
            s.serviceConfig.BindReadOnlyPaths == [ "/var/lib/hakuriver" ]
          ) "DB directory bound read-only")
          (check (!(s.serviceConfig ? LoadCredential)) "no credentials without TLS files")
          (check (s.serviceConfig.TimeoutStopSec == "45s") "stop timeout = default grace 30 s + 15 s")
          (check (s.serviceConfig.LimitNOFILE == 65536) "LimitNOFILE")
          (check (s.serviceConfig.FileDescriptorStoreMax == 70000) "fd store: 7 per tunnel x default max_connections")
          (check (!(s.serviceConfig ? FileDescriptorStorePreserve)) "no FileDescriptorStorePreserve: stop ends tunnels")
          (check (config.networking.firewall.allowedTCPPorts == [ ]) "firewall closed by default")
          (check (
            config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value == {
              network = {
                host_bind_ip = "0.0.0.0";
                host_ssh_proxy_port = 8002;
              };
              database.db_file = "/var/lib/hakuriver/hakuriver.db";
              ssh_proxy.tls = { };
              ssh_proxy.auth = { };
              ssh_proxy.admin = { };
            }
          ) "rendered TOML has no nulls: ${builtins.toJSON config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value}")
        ];
    };

    settings-rendered = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            port = 9002;
            settings = {
              database.db_file = "/srv/hakuriver/hakuriver.db";
              network.host_reachable_address = "198.51.100.1"; # HakuRiver key, freeform
              paths.shared_dir = "/mnt/shared"; # HakuRiver section, freeform
              ssh_proxy = {
                shutdown_grace_secs = 2.5;
                max_connections = 50000;
                idle_timeout_secs = 3600;
                tls.names = [ "proxy.example.org" ];
              };
            };
          };
        }
      ];
      checks =
        { config, ... }:
        let
          v = config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value;
        in
        [
          (check (v.network.host_ssh_proxy_port == 9002) "host_ssh_proxy_port follows port")
          (check (v.network.host_reachable_address == "198.51.100.1") "freeform [network] key kept")
          (check (v.paths.shared_dir == "/mnt/shared") "freeform section kept")
          (check (v.ssh_proxy.shutdown_grace_secs == 2.5) "float seconds kept")
          (check (v.ssh_proxy.tls.names == [ "proxy.example.org" ]) "tls.names rendered")
          (check (!(v.ssh_proxy ? request_timeout_secs)) "unset keys left to the daemon")
          (check ((sc config).TimeoutStopSec == "18s") "stop timeout follows grace (ceil 2.5 + 15)")
          (check ((sc config).LimitNOFILE == 101024) "LimitNOFILE follows max_connections")
          (check ((sc config).FileDescriptorStoreMax == 350000) "FileDescriptorStoreMax follows max_connections")
          (check (
            (sc config).BindReadOnlyPaths == [ "/srv/hakuriver" ]
          ) "bind follows database.db_file")
          (check ((sock config).listenStreams == [
            "0.0.0.0:9002"
            "[::]:9002"
          ]) "socket follows port")
        ];
    };

    tls-self-signed-on-main = {
      modules = [
        enable
        { services.hakuriver.sshProxy.tls.mode = "self-signed"; }
      ];
      checks =
        { config, ... }:
        [
          (check ((sock config).socketConfig.FileDescriptorName == "tls") "main socket speaks TLS")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-tls)) "no second socket without tls.port")
          (check (!((sc config) ? LoadCredential)) "self-signed needs no credentials")
          (check (!(lib.hasInfix "--tls" (sc config).ExecStart)) "socket activation: no TLS flags")
        ];
    };

    tls-self-signed-own-port = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            tls.mode = "self-signed";
            tls.port = 8003;
            openFirewall = true;
          };
        }
      ];
      checks =
        { config, ... }:
        let
          t = config.systemd.sockets.hakuriver-ssh-proxy-tls;
        in
        [
          (check ((sock config).socketConfig.FileDescriptorName == "plain") "main socket stays plain")
          (check (t.socketConfig.FileDescriptorName == "tls") "TLS socket fd name")
          (check (t.socketConfig.Service == "hakuriver-ssh-proxy.service") "TLS socket triggers the proxy")
          (check (t.listenStreams == [
            "0.0.0.0:8003"
            "[::]:8003"
          ]) "TLS socket listens on 8003")
          (check (t.wantedBy == [ "sockets.target" ]) "TLS socket wantedBy sockets.target")
          (check (builtins.elem "hakuriver-ssh-proxy-tls.socket" (svc config).after) "service after TLS socket")
          (check (config.networking.firewall.allowedTCPPorts == [
            8002
            8003
          ]) "openFirewall opens both ports")
        ];
    };

    tls-files = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.tls = {
            mode = "files";
            port = 8443;
            certFile = "/var/lib/acme/proxy/fullchain.pem";
            keyFile = "/var/lib/acme/proxy/key.pem";
          };
        }
      ];
      checks =
        { config, ... }:
        let
          s = sc config;
        in
        [
          (check (s.LoadCredential == [
            "tls-cert:/var/lib/acme/proxy/fullchain.pem"
            "tls-key:/var/lib/acme/proxy/key.pem"
          ]) "cert and key via LoadCredential")
          (check (lib.hasSuffix " --tls-cert \${CREDENTIALS_DIRECTORY}/tls-cert --tls-key \${CREDENTIALS_DIRECTORY}/tls-key" s.ExecStart)
            "ExecStart reads the credentials, unescaped so systemd expands them: ${s.ExecStart}")
          (check (!(lib.hasInfix "/var/lib/acme" s.ExecStart)) "original key path not on the command line")
        ];
    };

    socket-activation-off = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            socketActivation = false;
            listenAddresses = [
              "[::]"
              "10.0.0.1"
            ];
            tls.mode = "self-signed";
            tls.port = 8003;
          };
        }
      ];
      checks =
        { config, ... }:
        let
          s = svc config;
        in
        hardening config
        ++ [
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy)) "no socket unit")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-tls)) "no TLS socket unit")
          (check (s.wantedBy == [ "multi-user.target" ]) "started at boot")
          (check (s.requires == [ ]) "does not require a socket")
          (check (lib.hasSuffix
            "\"--bind\" \"::\" \"--port\" \"8002\" \"--listen\" \"10.0.0.1:8002\" \"--tls-listen\" \"[::]:8003\" \"--tls-listen\" \"10.0.0.1:8003\""
            s.serviceConfig.ExecStart) "binds itself: ${s.serviceConfig.ExecStart}")
          (check (s.serviceConfig.CapabilityBoundingSet == "") "no capability for ports >= 1024")
        ];
    };

    socket-activation-off-tls-main-low-port = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            socketActivation = false;
            port = 443;
            tls.mode = "self-signed";
          };
        }
      ];
      checks =
        { config, ... }:
        let
          s = sc config;
        in
        [
          (check (lib.hasSuffix "\"--bind\" \"0.0.0.0\" \"--port\" \"443\" \"--tls-listen\" \"[::]:443\" \"--tls\"" s.ExecStart)
            "main listener speaks TLS: ${s.ExecStart}")
          (check (s.CapabilityBoundingSet == "CAP_NET_BIND_SERVICE") "bounding set allows binding 443")
          (check (s.AmbientCapabilities == "CAP_NET_BIND_SERVICE") "ambient capability to bind 443")
        ];
    };

    database-group = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            databaseGroup = "hakuriver";
            bindReadOnlyPaths = [ "/root/.hakuriver:/var/lib/hakuriver" ];
          };
        }
      ];
      checks =
        { config, ... }:
        [
          (check ((sc config).SupplementaryGroups == [ "hakuriver" ]) "supplementary DB group")
          (check ((sc config).PrivateUsers == false) "PrivateUsers off with a supplementary group")
          (check ((sc config).BindReadOnlyPaths == [ "/root/.hakuriver:/var/lib/hakuriver" ]) "custom bind")
        ];
    };

    fd-store-off = {
      modules = [
        enable
        { services.hakuriver.sshProxy.settings.ssh_proxy.fd_store = "off"; }
      ];
      checks =
        { config, ... }:
        [
          (check ((sc config).FileDescriptorStoreMax == 0) "no fd store when it is off")
          (check (
            config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value.ssh_proxy.fd_store == "off"
          ) "fd_store rendered")
        ];
    };

    fd-store-on = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.settings.ssh_proxy = {
            fd_store = "on";
            max_connections = 20;
          };
        }
      ];
      checks =
        { config, ... }:
        [
          (check ((sc config).FileDescriptorStoreMax == 140) "7 x max_connections")
          (check (
            config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value.ssh_proxy.fd_store == "on"
          ) "fd_store rendered")
        ];
    };

    open-firewall = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            openFirewall = true;
            port = 2222;
          };
        }
      ];
      checks = { config, ... }: [ (check (config.networking.firewall.allowedTCPPorts == [ 2222 ]) "port opened") ];
    };

    assert-empty-listen-addresses = {
      modules = [
        enable
        { services.hakuriver.sshProxy.listenAddresses = [ ]; }
      ];
      expectModuleAssertions = true;
      checks = { failedModuleAssertions, ... }: [ (fired failedModuleAssertions "services.hakuriver.sshProxy.listenAddresses must not be empty") ];
    };

    assert-port-zero = {
      modules = [
        enable
        { services.hakuriver.sshProxy.port = 0; }
      ];
      expectModuleAssertions = true;
      checks = { failedModuleAssertions, ... }: [ (fired failedModuleAssertions "services.hakuriver.sshProxy.port must not be 0") ];
    };

    assert-tls-files-missing-key = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.tls = {
            mode = "files";
            certFile = "/etc/ssl/proxy.pem";
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.tls.mode = \"files\" needs both") ];
    };

    assert-key-in-store = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.tls = {
            mode = "files";
            certFile = "/etc/ssl/proxy.pem";
            keyFile = "${builtins.storeDir}/0000000000000000000000000000000-key.pem";
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.tls.keyFile must not be in the Nix store") ];
    };

    assert-cert-without-files-mode = {
      modules = [
        enable
        { services.hakuriver.sshProxy.tls.certFile = "/etc/ssl/proxy.pem"; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.tls.certFile/keyFile are only used") ];
    };

    assert-tls-port-without-tls = {
      modules = [
        enable
        { services.hakuriver.sshProxy.tls.port = 8003; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.tls.port is set but") ];
    };

    assert-tls-port-equals-port = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.tls = {
            mode = "self-signed";
            port = 8002;
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.tls.port must differ") ];
    };

    assert-unbracketed-ipv6 = {
      modules = [
        enable
        { services.hakuriver.sshProxy.listenAddresses = [ "::1" ]; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.listenAddresses: IPv6 address \"::1\" must be written in brackets") ];
    };

    assert-managed-settings = {
      modules = [
        enable
        { services.hakuriver.sshProxy.settings.ssh_proxy.tls.cert_file = "/etc/ssl/x.pem"; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.settings.ssh_proxy.tls.cert_file is derived") ];
    };

    auth-kohakuriver-with-tls = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            tls.mode = "self-signed";
            settings.ssh_proxy.auth.mode = "kohakuriver";
          };
        }
      ];
      checks =
        { config, ... }:
        [
          (check (
            config.services.hakuriver.sshProxy.settings.ssh_proxy.auth.mode == "kohakuriver"
          ) "auth mode kept in the rendered settings")
          (check ((sock config).socketConfig.FileDescriptorName == "tls") "main socket speaks TLS")
        ];
    };

    assert-auth-needs-tls = {
      modules = [
        enable
        { services.hakuriver.sshProxy.settings.ssh_proxy.auth.mode = "kohakuriver"; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.settings.ssh_proxy.auth.mode = \"kohakuriver\" needs TLS") ];
    };

    assert-auth-no-plain-port = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            tls.mode = "self-signed";
            tls.port = 8003;
            settings.ssh_proxy.auth.mode = "kohakuriver";
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.settings.ssh_proxy.auth.mode = \"kohakuriver\" needs TLS") ];
    };
    admin-socket = {
      modules = [
        enable
        { services.hakuriver.sshProxy.admin.enable = true; }
      ];
      checks =
        { config, ... }:
        let
          a = config.systemd.sockets.hakuriver-ssh-proxy-admin;
          s = svc config;
          v = config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value;
        in
        [
          (check (a.listenStreams == [ "127.0.0.1:9102" ]) "admin socket on 127.0.0.1:9102, got ${builtins.toJSON a.listenStreams}")
          (check (a.socketConfig.FileDescriptorName == "admin") "admin fd name")
          (check (a.socketConfig.Service == "hakuriver-ssh-proxy.service") "admin socket triggers the proxy")
          (check (a.socketConfig.Accept == false) "admin socket Accept=no")
          (check (a.wantedBy == [ "sockets.target" ]) "admin socket wantedBy sockets.target")
          (check (builtins.elem "hakuriver-ssh-proxy-admin.socket" s.after) "service after the admin socket")
          (check (builtins.elem "hakuriver-ssh-proxy-admin.socket" s.wants) "service wants the admin socket")
          (check (s.requires == [ "hakuriver-ssh-proxy.socket" ]) "service still requires only the main socket")
          (check (v.ssh_proxy.admin == { }) "socket activation: no admin.listen in the file (the socket owns it), got ${builtins.toJSON v.ssh_proxy.admin}")
          (check (!(lib.hasInfix "admin" s.serviceConfig.ExecStart)) "no admin flag on the command line")
          (check (config.networking.firewall.allowedTCPPorts == [ ]) "admin port not opened by default")
        ];
    };

    admin-without-socket-activation = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            socketActivation = false;
            admin = {
              enable = true;
              listenAddress = "[::1]";
              port = 9200;
            };
          };
        }
      ];
      checks =
        { config, ... }:
        let
          v = config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value;
        in
        [
          (check (v.ssh_proxy.admin.listen == [ "[::1]:9200" ]) "daemon binds the admin address from the file, got ${builtins.toJSON v.ssh_proxy.admin}")
          (check (!(v.ssh_proxy.admin ? allow_remote)) "allow_remote left to the daemon default")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-admin)) "no admin socket unit")
          (check ((sc config).CapabilityBoundingSet == "") "no capability for an admin port >= 1024")
        ];
    };

    admin-remote-allowed = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            admin = {
              enable = true;
              listenAddress = "10.0.0.5";
              openFirewall = true;
            };
            settings.ssh_proxy.admin.allow_remote = true;
          };
        }
      ];
      checks =
        { config, ... }:
        let
          v = config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value;
        in
        [
          (check (config.systemd.sockets.hakuriver-ssh-proxy-admin.listenStreams == [ "10.0.0.5:9102" ]) "admin socket on the remote address")
          (check (v.ssh_proxy.admin.allow_remote == true) "allow_remote rendered")
          (check (config.networking.firewall.allowedTCPPorts == [ 9102 ]) "admin.openFirewall opens only the admin port, got ${builtins.toJSON config.networking.firewall.allowedTCPPorts}")
        ];
    };

    admin-firewall-with-main = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            openFirewall = true;
            admin.enable = true;
            admin.openFirewall = true;
          };
        }
      ];
      checks =
        { config, ... }:
        [
          (check (config.networking.firewall.allowedTCPPorts == [
            8002
            9102
          ]) "both openFirewall options together, got ${builtins.toJSON config.networking.firewall.allowedTCPPorts}")
        ];
    };

    admin-firewall-needs-enable = {
      modules = [
        enable
        { services.hakuriver.sshProxy.admin.openFirewall = true; }
      ];
      checks =
        { config, ... }:
        [
          (check (config.networking.firewall.allowedTCPPorts == [ ]) "admin.openFirewall without admin.enable opens nothing")
          (check (!(config.systemd.sockets ? hakuriver-ssh-proxy-admin)) "no admin socket without admin.enable")
        ];
    };

    trusted-proxies = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.settings.ssh_proxy.trusted_proxies = [
            "10.0.0.0/8"
            "127.0.0.2"
          ];
        }
      ];
      checks =
        { config, ... }:
        let
          v = config.environment.etc."hakuriver-ssh-proxy/config.toml".source.value;
        in
        [
          (check (v.ssh_proxy.trusted_proxies == [
            "10.0.0.0/8"
            "127.0.0.2"
          ]) "trusted_proxies rendered")
        ];
    };

    assert-admin-remote-needs-allow = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.admin = {
            enable = true;
            listenAddress = "0.0.0.0";
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.admin.listenAddress = \"0.0.0.0\" is not a loopback address") ];
    };

    assert-admin-remote-allow-false = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy = {
            admin = {
              enable = true;
              listenAddress = "[2001:db8::1]";
            };
            settings.ssh_proxy.admin.allow_remote = false;
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.admin.listenAddress = \"[2001:db8::1]\" is not a loopback address") ];
    };

    assert-admin-unbracketed-ipv6 = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.admin = {
            enable = true;
            listenAddress = "::1";
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.admin.listenAddress: IPv6 address \"::1\" must be written in brackets") ];
    };

    assert-admin-port-clash = {
      modules = [
        enable
        {
          services.hakuriver.sshProxy.admin = {
            enable = true;
            port = 8002;
          };
        }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.admin.port must not be 0 and must differ") ];
    };

    assert-admin-listen-managed = {
      modules = [
        enable
        { services.hakuriver.sshProxy.settings.ssh_proxy.admin.listen = [ "127.0.0.1:9102" ]; }
      ];
      expectModuleAssertions = true;
      checks =
        { failedModuleAssertions, ... }:
        [ (fired failedModuleAssertions "services.hakuriver.sshProxy.settings.ssh_proxy.admin.listen is derived") ];
    };
  };
}
