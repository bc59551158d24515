# Offline eval cases for nixos-module/client.nix (run by tests/nix/check.sh).
# programs.ssh.extraConfig is declared here because the eval stubs lack it (it exists in NixOS).
{ lib }:
let
  sshStub = { lib, ... }: { options.programs.ssh.extraConfig = lib.mkOption { type = lib.types.lines; default = ""; }; };
in {
  cases = {
    client-disabled = { modules = [ sshStub ]; checks = { config, ... }: [ { assertion = config.programs.ssh.extraConfig == ""; message = "nothing when disabled"; } ]; };
    client-enabled = {
      modules = [ sshStub { programs.hakuriver-ssh = { enable = true; host = "hr.example.org"; port = 8003; extraArgs = [ "--tls" ]; }; } ];
      checks = { config, pkgs, ... }: let c = config.programs.ssh.extraConfig; in [
        { assertion = lib.hasInfix "Host hakuriver-*\n  ProxyCommand /nix/store/" c && lib.hasInfix "hakuriver-ssh-proxycommand %n\n  User root\n" c; message = "ssh block: ${c}"; }
        { assertion = map (p: p.name) config.environment.systemPackages == [ "hakuriver-ssh" ]; message = "client installed"; }
      ];
    };
  };
}
