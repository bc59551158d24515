{
  description = "hakuriver-ssh: ssh into a HakuRiver VPS task by its ID, and the Host proxy that routes it";

  # nixpkgs is the only input: no flake-utils, no rust overlay (rustPlatform from nixpkgs
  # builds the workspace; the crates need no native libraries: rusqlite is bundled, TLS
  # is rustls). No flake.lock is shipped: the first `nix build` or `nix flake lock`
  # writes one for your nixpkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # The proxy is Linux-only (systemd, HakuRiver's Host); the client also runs on macOS.
      forAllSystems = lib.genAttrs (
        linuxSystems
        ++ [
          "x86_64-darwin"
          "aarch64-darwin"
        ]
      );
      isLinux = system: builtins.elem system linuxSystems;
      pkgsFor = system: nixpkgs.legacyPackages.${system};

      version = (lib.importTOML ./Cargo.toml).workspace.package.version;

      # Everything cargo may read (sources, manifests, example configs a test might
      # include_str!), minus the files only Nix reads, so editing the module or this
      # flake does not rebuild the binaries.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.difference ./. (
          lib.fileset.unions [
            ./flake.nix
            ./nixos-module
            (lib.fileset.maybeMissing ./flake.lock)
            (lib.fileset.maybeMissing ./.git)
            (lib.fileset.maybeMissing ./result)
            (lib.fileset.maybeMissing ./target)
          ]
        );
      };

      # One derivation per binary: `-p` builds only that crate (and hakuriver-tunnel),
      # and each package gets its own meta.mainProgram for `nix run` and lib.getExe.
      buildCrate =
        pkgs: crate: args:
        pkgs.rustPlatform.buildRustPackage (
          {
            pname = crate;
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "-p"
              crate
            ];
            # checkPhase: only the unit tests of the library crates (hakuriver-tunnel and
            # this crate). The end-to-end tests live in the `hakuriver-ssh-tests` package
            # and need OpenSSH's sshd, the HakuRiver Python peer, systemd or docker, none of
            # which exist in the build sandbox; by project rule they fail (not skip) when a
            # dependency is missing. An allow-list by package is chosen over
            # `checkFlags = [ "--skip" ... ]` because a skip-list by test name would have to
            # follow every new end-to-end test. The e2e suite runs in CI and in the NixOS VM
            # test (checks.<system>.vm-test).
            cargoTestFlags = [
              "-p"
              "hakuriver-tunnel"
              "-p"
              crate
              "--lib"
            ];
            # Unit tests bind 127.0.0.1:0; the macOS sandbox needs this for loopback.
            __darwinAllowLocalNetworking = true;
            meta = {
              homepage = "https://github.com/hakuriver-ssh/hakuriver-ssh";
              license = lib.licenses.mit;
              mainProgram = crate;
            } // (args.meta or { });
          }
          // removeAttrs args [ "meta" ]
        );

      packagesFor = pkgs: {
        hakuriver-ssh = buildCrate pkgs "hakuriver-ssh" {
          nativeBuildInputs = [ pkgs.installShellFiles ];
          # `hakuriver.ssh` is the name HakuRiver's own CLI used.
          postInstall =
            ''
              ln -s hakuriver-ssh "$out/bin/hakuriver.ssh"
            ''
            # Completions and the man page come from the built binary, which cannot run
            # when cross-compiling.
            + lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
              installShellCompletion --cmd hakuriver-ssh \
                --bash <("$out/bin/hakuriver-ssh" completions bash) \
                --zsh <("$out/bin/hakuriver-ssh" completions zsh) \
                --fish <("$out/bin/hakuriver-ssh" completions fish)
              "$out/bin/hakuriver-ssh" man > hakuriver-ssh.1
              installManPage hakuriver-ssh.1
            '';
          doInstallCheck = true;
          installCheckPhase = ''
            runHook preInstallCheck
            "$out/bin/hakuriver-ssh" --help > /dev/null
            "$out/bin/hakuriver.ssh" --help > /dev/null
            runHook postInstallCheck
          '';
          meta = {
            description = "Open an SSH session to a HakuRiver VPS task by its ID (ssh wrapper and ProxyCommand)";
            platforms = lib.platforms.unix;
          };
        };

        hakuriver-ssh-proxy = buildCrate pkgs "hakuriver-ssh-proxy" {
          # The units from packaging/systemd, for non-NixOS hosts using this package
          # (`systemctl link` or systemd.packages); the NixOS module renders its own.
          postInstall = ''
            for unit in packaging/systemd/*.socket packaging/systemd/*.service; do
              install -Dm444 "$unit" "$out/lib/systemd/system/$(basename "$unit")"
            done
            substituteInPlace "$out/lib/systemd/system/hakuriver-ssh-proxy.service" \
              --replace-fail /usr/bin/hakuriver-ssh-proxy "$out/bin/hakuriver-ssh-proxy" \
              --replace-fail /bin/kill ${lib.getExe' pkgs.coreutils "kill"}
          '';
          doInstallCheck = true;
          installCheckPhase = ''
            runHook preInstallCheck
            "$out/bin/hakuriver-ssh-proxy" --help > /dev/null
            runHook postInstallCheck
          '';
          meta = {
            description = "HakuRiver Host SSH proxy: routes REQUEST_TUNNEL <task_id> to the VPS task's sshd";
            platforms = lib.platforms.linux;
          };
        };
      };
    in
    {
      overlays.default = final: _prev: packagesFor final;

      packages = forAllSystems (
        system:
        let
          p = packagesFor (pkgsFor system);
        in
        if isLinux system then
          {
            inherit (p) hakuriver-ssh hakuriver-ssh-proxy;
            default = p.hakuriver-ssh-proxy;
          }
        else
          {
            inherit (p) hakuriver-ssh;
            default = p.hakuriver-ssh;
          }
      );

      # nix run .#hakuriver-ssh -- 42
      # nix run .#hakuriver-ssh-proxy -- check --config ./config.toml
      apps = forAllSystems (
        system:
        let
          p = self.packages.${system};
          app = drv: {
            type = "app";
            program = lib.getExe drv;
            meta.description = drv.meta.description;
          };
        in
        {
          hakuriver-ssh = app p.hakuriver-ssh;
          default = app p.default;
        }
        // lib.optionalAttrs (isLinux system) { hakuriver-ssh-proxy = app p.hakuriver-ssh-proxy; }
      );

      # The module takes its package from the system's pkgs (mkPackageOption); this
      # wrapper supplies this flake's build as the default, without an overlay inside the
      # module (runNixOSTest gives nodes a read-only pkgs).
      nixosModules = {
        default =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-module ];
            services.hakuriver.sshProxy.package =
              lib.mkDefault
                self.packages.${pkgs.stdenv.hostPlatform.system}.hakuriver-ssh-proxy;
          };
        hakuriver-ssh-proxy = self.nixosModules.default;
        client =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-module/client.nix ];
            programs.hakuriver-ssh.package =
              lib.mkDefault
                self.packages.${pkgs.stdenv.hostPlatform.system}.hakuriver-ssh;
          };
      };

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            # The end-to-end tests use real peers: sshd/ssh, sqlite3 for HakuRiver's schema,
            # socat, and python3 for the HakuRiver 0.3.0 venv (tests/setup-deps.sh).
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              sqlite
              openssh
              socat
              python3
            ];
          };
        }
      );

      # `nix fmt`: nixfmt (RFC 166 style; nixfmt-rfc-style is its former name) run over
      # the tree.
      formatter = forAllSystems (system: (pkgsFor system).nixfmt-tree);

      checks = forAllSystems (
        system:
        removeAttrs self.packages.${system} [ "default" ]
        // lib.optionalAttrs (isLinux system) {
          # nix build .#checks.x86_64-linux.vm-test -L
          vm-test = import ./nixos-module/tests/vm-test.nix {
            inherit self;
            pkgs = pkgsFor system;
          };
        }
      );
    };
}
