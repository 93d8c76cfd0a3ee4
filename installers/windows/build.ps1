<#
.SYNOPSIS
Builds the per-user Pinnace installer, dist\windows\Pinnace-<version>-x86_64-setup.exe.

.DESCRIPTION
1. renders resources\icons\pinnace.svg to build\windows\pinnace.ico (recipe.py icon),
2. runs PyInstaller with installers\windows\pinnace.spec -> dist\windows\Pinnace,
3. writes build\windows\pinnace.iss (recipe.py iss; checks the guest image against its manifest),
4. compiles it with Inno Setup's ISCC.
See installers\README.md for the prerequisites.

.EXAMPLE
.\installers\windows\build.ps1 -Image C:\pinnace-images\x86_64
#>
param(
    # A built x86_64 guest image directory (manifest.json, vmlinuz, initrd.img, rootfs.img, cmdline).
    [Parameter(Mandatory = $true)][string]$Image,
    # The build venv's Python (default: .venv\Scripts\python.exe in the checkout).
    [string]$Python = "",
    # ISCC.exe (default: on PATH, else Inno Setup 6's usual install folders).
    [string]$Iscc = ""
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$Here = $PSScriptRoot
$Root = (Resolve-Path (Join-Path $Here "..\..")).Path
if (-not $Python) { $Python = Join-Path $Root ".venv\Scripts\python.exe" }
$Work = Join-Path $Root "build\windows"
$Dist = Join-Path $Root "dist\windows"
$Recipe = Join-Path $Here "recipe.py"

function Invoke-Step([string]$Exe, [string[]]$Arguments) {
    Write-Host "+ $Exe $($Arguments -join ' ')"
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe failed with exit code $LASTEXITCODE" }
}

function Find-Iscc {
    if ($Iscc) { return $Iscc }
    $onPath = Get-Command "iscc.exe" -ErrorAction SilentlyContinue
    if ($onPath) { return $onPath.Source }
    $candidates = @(
        (Join-Path ${env:ProgramFiles(x86)} "Inno Setup 6\ISCC.exe"),
        (Join-Path $env:ProgramFiles "Inno Setup 6\ISCC.exe"),
        (Join-Path $env:LOCALAPPDATA "Programs\Inno Setup 6\ISCC.exe")
    )
    foreach ($candidate in $candidates) {
        if (Test-Path $candidate) { return $candidate }
    }
    throw "ISCC.exe not found: winget install JRSoftware.InnoSetup, or pass -Iscc"
}

New-Item -ItemType Directory -Force -Path $Work, $Dist | Out-Null
$Icon = Join-Path $Work "pinnace.ico"
$Iss = Join-Path $Work "pinnace.iss"
$Image = (Resolve-Path $Image).Path

Invoke-Step $Python @($Recipe, "icon", $Icon)

$env:PINNACE_ICO = $Icon
Invoke-Step $Python @("-m", "PyInstaller", "--noconfirm", "--clean",
    "--distpath", $Dist, "--workpath", (Join-Path $Work "pyinstaller"), (Join-Path $Here "pinnace.spec"))

Invoke-Step $Python @($Recipe, "iss", "--dist", (Join-Path $Dist "Pinnace"), "--image", $Image,
    "--icon", $Icon, "--output-dir", $Dist, "--out", $Iss)

Invoke-Step (Find-Iscc) @($Iss)
Get-ChildItem (Join-Path $Dist "Pinnace-*-setup.exe") | ForEach-Object { Write-Host "built $($_.FullName)" }
