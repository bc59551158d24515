# NixOS module for the user-side client (programs.hakuriver-ssh): installs
# `hakuriver-ssh` and lets plain `ssh hakuriver-<task_id>` (and scp, rsync, sftp,
# editors' remote modes) reach a VPS task through the Host's proxy, via ProxyCommand.
# The flake's nixosModules.client imports this file and sets `package`.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    types
    ;
  cfg = config.programs.hakuriver-ssh;

  clientArgs =
    lib.optionals (cfg.host != null) [
      "--host"
      cfg.host
    ]
    ++ lib.optionals (cfg.port != null) [
      "--proxy-port"
      (toString cfg.port)
    ]
    ++ cfg.extraArgs;

  # ssh gives ProxyCommand the host alias as typed (%n), e.g. "hakuriver-42"; the client
  # takes the bare task ID, so the prefix is stripped here rather than taught to it.
  proxyCommand = pkgs.writeShellScript "hakuriver-ssh-proxycommand" ''
    alias=$1
    task_id=''${alias#${cfg.hostPrefix}}
    exec ${lib.getExe cfg.package} ${lib.escapeShellArgs clientArgs} --stdio "$task_id"
  '';
in
{
  options.programs.hakuriver-ssh = {
    enable = mkEnableOption "the hakuriver-ssh client and an ssh_config block for `ssh ${cfg.hostPrefix}<task_id>`";

    package = mkPackageOption pkgs "hakuriver-ssh" { };

    hostPrefix = mkOption {
      type = types.strMatching "[A-Za-z0-9._-]+";
      default = "hakuriver-";
      description = "`ssh <hostPrefix><task_id>` goes through the proxy; the rest of the name is the task ID.";
    };

    host = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "hakuriver-host.example.org";
      description = ''
        Proxy host (`--host`). `null`: each user's `~/.hakuriver/config.toml`
        (`[network] host_reachable_address`) decides.
      '';
    };

    port = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = 8002;
      description = "Proxy port (`--proxy-port`). `null`: the user's config (default 8002).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--tls"
        "--fingerprint"
        "sha256:0000000000000000000000000000000000000000000000000000000000000000"
      ];
      description = "More client options for the ProxyCommand, e.g. TLS and a pinned fingerprint.";
    };

    sshUser = mkOption {
      type = types.nullOr types.str;
      default = "root";
      description = "`User` for `${cfg.hostPrefix}*` hosts (HakuRiver VPS tasks log in as root). `null`: leave ssh's default.";
    };
  };

  config = mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    programs.ssh.extraConfig = lib.concatStringsSep "\n" (
      [
        "Host ${cfg.hostPrefix}*"
        "  ProxyCommand ${proxyCommand} %n"
      ]
      ++ lib.optional (cfg.sshUser != null) "  User ${cfg.sshUser}"
    ) + "\n";
  };
}
