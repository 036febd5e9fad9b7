<#
.SYNOPSIS
    Installs gptoss for the current user, without administrator rights.

.DESCRIPTION
    1. Finds Python 3.10-3.13 (the py launcher, preferring 3.12, then python on PATH). With none, installs
       Python 3.12 for this user with winget, or says exactly what to do.
    2. Creates (or reuses) an isolated environment in %LOCALAPPDATA%\gptoss\venv.
    3. Reads the NVIDIA driver and GPU with nvidia-smi and installs the matching CUDA build of PyTorch from
       PyTorch's own index (PyPI's torch is CPU-only on Windows); with no usable NVIDIA GPU, the CPU build.
       The choice is made by gptoss_cli.install_logic, the same code `gptoss doctor` uses, so gptoss itself is
       installed first without its dependencies.
    4. Installs triton-windows paired with that torch (OpenAI's triton has no Windows wheels). If it fails,
       gptoss still works on its slower torch path.
    5. Installs gptoss, copies its launcher to %LOCALAPPDATA%\gptoss\bin and puts that folder on the user PATH.
    6. Runs `gptoss doctor`, which ends with the next command to type.
    Running it again upgrades everything in place.

.PARAMETER Source
    What to install as gptoss: a folder, a wheel, a URL or a PyPI name. Default: the folder this script is in
    when it is a gptoss checkout, else "gptoss" from PyPI.

.PARAMETER Python
    A python.exe to use instead of searching for one.

.PARAMETER Cpu
    Install the CPU build of torch even if there is an NVIDIA GPU.

.PARAMETER Uninstall
    Remove the environment, the launcher and the PATH entry. Downloaded models stay unless -RemoveModels.

.PARAMETER RemoveModels
    With -Uninstall: also delete the model folder (gptoss's store; the Hugging Face cache is left alone).

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\install.ps1

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\install.ps1 -Uninstall -RemoveModels
#>
[CmdletBinding()]
param(
    [string]$Source,
    [string]$Python,
    [switch]$Cpu,
    [switch]$Uninstall,
    [switch]$RemoveModels
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$Root = Join-Path $env:LOCALAPPDATA 'gptoss'
$Venv = Join-Path $Root 'venv'
$Bin = Join-Path $Root 'bin'
$VenvPython = Join-Path $Venv 'Scripts\python.exe'
$PythonSupported = '(3,10) <= sys.version_info[:2] <= (3,13)'

function Write-Step([string]$Text) { Write-Host "==> $Text" -ForegroundColor Cyan }
function Write-Note([string]$Text) { Write-Host "    $Text" }
function Write-Warn([string]$Text) { Write-Host "    warning: $Text" -ForegroundColor Yellow }

function ConvertTo-CommandLine([string[]]$Arguments) {
    # Quotes arguments the way the Microsoft C runtime splits them (paths with spaces, embedded quotes).
    $quoted = foreach ($arg in $Arguments) {
        if ($arg -eq '') { '""' }
        elseif ($arg -notmatch '[\s"]') { $arg }
        else { '"' + (($arg -replace '(\\*)"', '$1$1\"') -replace '(\\+)$', '$1$1') + '"' }
    }
    return ($quoted -join ' ')
}

function Invoke-Native {
    # Runs a program attached to this console (pip shows its progress bars, gptoss its colours) and returns
    # its exit code; throws on failure unless -AllowFailure. Nothing it prints enters PowerShell's pipeline.
    param([string]$Exe, [string[]]$Arguments, [switch]$AllowFailure)
    $path = (Get-Command $Exe -CommandType Application -ErrorAction Stop | Select-Object -First 1).Path
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $path
    $info.Arguments = ConvertTo-CommandLine $Arguments
    $info.UseShellExecute = $false
    $process = [System.Diagnostics.Process]::Start($info)
    $process.WaitForExit()
    $code = $process.ExitCode
    if ($code -ne 0 -and -not $AllowFailure) {
        throw "'$Exe $($info.Arguments)' failed with exit code $code"
    }
    return $code
}

function Get-NativeOutput {
    # A program's stdout as lines, or $null when it cannot run or fails. Its stderr is hidden unless
    # -ShowErrors. (ErrorActionPreference is relaxed: Windows PowerShell 5.1 turns stderr into errors.)
    param([string]$Exe, [string[]]$Arguments, [switch]$ShowErrors)
    $saved = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        if ($ShowErrors) { $lines = & $Exe @Arguments } else { $lines = & $Exe @Arguments 2>$null }
        if ($LASTEXITCODE -ne 0) { return $null }
        return @($lines)
    } catch {
        return $null
    } finally {
        $ErrorActionPreference = $saved
    }
}

function Test-Python([string]$Exe, [string[]]$Prefix) {
    # The interpreter's path when it is CPython 3.10-3.13, 64-bit; else $null.
    $probe = "import struct, sys; print(sys.executable if $PythonSupported and struct.calcsize('P') == 8 else '')"
    $out = Get-NativeOutput $Exe ($Prefix + @('-c', $probe))
    if ($null -eq $out) { return $null }
    $path = ($out | Select-Object -Last 1)
    if ([string]::IsNullOrWhiteSpace($path)) { return $null }
    return $path.Trim()
}

function Find-Python {
    # Order: -Python; the py launcher (3.12 first: every wheel gptoss needs exists for it); python on PATH,
    # skipping the Microsoft Store stubs in WindowsApps (triton-windows advises against Store Python).
    if ($Python) {
        $found = Test-Python $Python @()
        if (-not $found) { throw "$Python is not a 64-bit Python 3.10-3.13." }
        return $found
    }
    if (Get-Command py -ErrorAction SilentlyContinue) {
        foreach ($version in @('3.12', '3.13', '3.11', '3.10')) {
            $found = Test-Python 'py' @("-$version")
            if ($found) { return $found }
        }
    }
    foreach ($cmd in @(Get-Command python -All -CommandType Application -ErrorAction SilentlyContinue)) {
        if ($cmd.Path -like '*\WindowsApps\*') { continue }
        $found = Test-Python $cmd.Path @()
        if ($found) { return $found }
    }
    $userPython = Join-Path $env:LOCALAPPDATA 'Programs\Python\Python312\python.exe'
    if (Test-Path $userPython) {
        $found = Test-Python $userPython @()
        if ($found) { return $found }
    }
    return $null
}

function Install-Python {
    # Per-user Python 3.12 from python.org's installer through winget: no administrator rights needed.
    if (-not (Get-Command winget -ErrorAction SilentlyContinue)) {
        throw ("No Python 3.10-3.13 found, and winget is not available to install one.`n" +
               "Install Python 3.12 (64-bit) from https://www.python.org/downloads/windows/ : in the installer keep " +
               "'Install for all users' unticked and tick 'Add python.exe to PATH'. Then run this script again.")
    }
    Write-Step 'Installing Python 3.12 for this user (winget)'
    Invoke-Native 'winget' @('install', '--id', 'Python.Python.3.12', '--exact', '--scope', 'user', '--silent',
        '--accept-package-agreements', '--accept-source-agreements') | Out-Null
    $userPython = Join-Path $env:LOCALAPPDATA 'Programs\Python\Python312\python.exe'
    $found = Test-Python $userPython @()
    if (-not $found) { throw "winget finished but $userPython does not run; open a new terminal and run this script again." }
    return $found
}

function Get-UserPath {
    # The user PATH exactly as stored (REG_EXPAND_SZ, %VARIABLES% unexpanded).
    $key = [Microsoft.Win32.Registry]::CurrentUser.OpenSubKey('Environment')
    try {
        return [string]$key.GetValue('Path', '', [Microsoft.Win32.RegistryValueOptions]::DoNotExpandEnvironmentNames)
    } finally { $key.Close() }
}

function Set-UserPath([string]$Value) {
    $key = [Microsoft.Win32.Registry]::CurrentUser.OpenSubKey('Environment', $true)
    try {
        $key.SetValue('Path', $Value, [Microsoft.Win32.RegistryValueKind]::ExpandString)
    } finally { $key.Close() }
    Send-EnvironmentChangedOrWarn
}

function Send-EnvironmentChanged {
    # Tells Explorer and other programs that the environment changed, so new terminals see the new PATH.
    if (-not ('GptossNative.Env' -as [type])) {
        Add-Type -Namespace GptossNative -Name Env -MemberDefinition @'
[DllImport("user32.dll", SetLastError = true, CharSet = CharSet.Unicode)]
public static extern IntPtr SendMessageTimeout(IntPtr hWnd, uint Msg, UIntPtr wParam, string lParam,
    uint fuFlags, uint uTimeout, out UIntPtr lpdwResult);
'@
    }
    $result = [UIntPtr]::Zero
    # HWND_BROADCAST, WM_SETTINGCHANGE, SMTO_ABORTIFHUNG, 5 s
    [GptossNative.Env]::SendMessageTimeout([IntPtr]0xffff, 0x1A, [UIntPtr]::Zero, 'Environment', 2, 5000,
        [ref]$result) | Out-Null
}

function Send-EnvironmentChangedOrWarn {
    # Add-Type is refused under Constrained Language Mode (locked-down PCs); the PATH is saved all the same.
    try { Send-EnvironmentChanged } catch {
        Write-Warn 'could not announce the PATH change; sign out and in again if a new terminal does not find gptoss'
    }
}

function Split-PathList([string]$Value) {
    # Callers wrap the result in @(): PowerShell unrolls a one-element array on return.
    return @($Value -split ';' | Where-Object { $_ -ne '' })
}

function Add-ToUserPath([string]$Dir) {
    $entries = @(Split-PathList (Get-UserPath))
    if ($entries | Where-Object { $_.TrimEnd('\') -ieq $Dir.TrimEnd('\') }) {
        Write-Note "$Dir is already on your PATH"
    } else {
        Set-UserPath (($entries + $Dir) -join ';')
        Write-Note "added $Dir to your user PATH"
    }
    if (-not (@(Split-PathList $env:Path) | Where-Object { $_.TrimEnd('\') -ieq $Dir.TrimEnd('\') })) {
        $env:Path = "$Dir;$env:Path"
    }
}

function Remove-FromUserPath([string]$Dir) {
    $entries = @(Split-PathList (Get-UserPath))
    $kept = @($entries | Where-Object { $_.TrimEnd('\') -ine $Dir.TrimEnd('\') })
    if ($kept.Count -ne $entries.Count) {
        Set-UserPath ($kept -join ';')
        Write-Note "removed $Dir from your user PATH"
    }
}

function Get-ModelsDir {
    # Where gptoss keeps models: asked of the installed gptoss (it honours GPTOSS_MODELS), else the default.
    if (Test-Path $VenvPython) {
        $out = Get-NativeOutput $VenvPython @('-c', 'from gptoss_cli.settings import models_dir; print(models_dir())')
        if ($out) { return ($out | Select-Object -Last 1).Trim() }
    }
    if ($env:GPTOSS_MODELS) { return $env:GPTOSS_MODELS }
    return (Join-Path $Root 'Cache\models')
}

function Uninstall-Gptoss {
    Write-Step 'Uninstalling gptoss'
    $models = Get-ModelsDir
    foreach ($dir in @($Venv, $Bin)) {
        if (Test-Path $dir) {
            try { Remove-Item -Recurse -Force $dir } catch {
                throw "Could not remove $dir ($($_.Exception.Message)). Close every running gptoss and try again."
            }
            Write-Note "removed $dir"
        }
    }
    Remove-FromUserPath $Bin
    if ($RemoveModels) {
        if (Test-Path $models) { Remove-Item -Recurse -Force $models; Write-Note "removed the models in $models" }
    } elseif (Test-Path $models) {
        Write-Note "kept the models in $models (add -RemoveModels to delete them)"
    }
    if ((Test-Path $Root) -and -not (Get-ChildItem -Force $Root)) { Remove-Item -Force $Root }
    Write-Step 'gptoss is uninstalled'
}

function Get-GptossSource {
    if ($Source) { return $Source }
    $here = $PSScriptRoot
    if ($here -and (Test-Path (Join-Path $here 'pyproject.toml')) -and (Test-Path (Join-Path $here 'gptoss_cli'))) {
        return $here
    }
    return 'gptoss'
}

function Get-NvidiaSmi {
    $cmd = Get-Command nvidia-smi -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($cmd) { return $cmd.Path }
    $legacy = Join-Path $env:ProgramFiles 'NVIDIA Corporation\NVSMI\nvidia-smi.exe'
    if (Test-Path $legacy) { return $legacy }
    return $null
}

function Get-GpuCsv {
    # nvidia-smi's CSV lines; compute_cap is asked for too, and dropped for drivers too old to know it.
    $smi = Get-NvidiaSmi
    if (-not $smi) { return @() }
    foreach ($fields in @('driver_version,name,memory.total,compute_cap', 'driver_version,name,memory.total')) {
        $lines = Get-NativeOutput $smi @("--query-gpu=$fields", '--format=csv,noheader,nounits')
        if ($null -ne $lines) { return $lines }
    }
    return @()
}

function Install-Gptoss {
    $src = Get-GptossSource

    Write-Step 'Looking for Python 3.10-3.13'
    $basePython = Find-Python
    if (-not $basePython) { $basePython = Install-Python }
    Write-Note "using $basePython"

    if ((Test-Path $VenvPython) -and -not (Test-Python $VenvPython @())) {
        Write-Warn "the environment in $Venv is broken (was its Python removed?); recreating it"
        Remove-Item -Recurse -Force $Venv
    }
    if (Test-Path $VenvPython) {
        Write-Step "Upgrading the environment in $Venv"
    } else {
        Write-Step "Creating the environment in $Venv"
        Invoke-Native $basePython @('-m', 'venv', $Venv) | Out-Null
    }
    Invoke-Native $VenvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', 'pip') | Out-Null

    Write-Step "Installing gptoss from $src (its dependencies follow once torch is chosen)"
    Invoke-Native $VenvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', '--force-reinstall', '--no-deps', $src) | Out-Null

    Write-Step 'Choosing the PyTorch build for this PC'
    $csv = @(Get-GpuCsv)
    $smiFile = [System.IO.Path]::GetTempFileName()
    try {
        [System.IO.File]::WriteAllLines($smiFile, [string[]]$csv)
        $chooseArgs = @('-m', 'gptoss_cli.install_logic', 'choose', '--os', 'windows', '--smi-file', $smiFile)
        if ($Cpu) { $chooseArgs += '--cpu' }
        $json = Get-NativeOutput $VenvPython $chooseArgs -ShowErrors
        if ($null -eq $json) { throw 'gptoss_cli.install_logic could not choose a torch build (see the error above).' }
        $choice = ($json -join "`n") | ConvertFrom-Json
    } finally {
        Remove-Item -Force $smiFile -ErrorAction SilentlyContinue
    }
    foreach ($line in $choice.reasons) { Write-Note $line }
    foreach ($line in $choice.warnings) { Write-Warn $line }

    if ($choice.replace_installed_torch) {
        Write-Step 'Removing the torch build that does not fit'
        Invoke-Native $VenvPython @('-m', 'pip', 'uninstall', '--yes', 'torch') | Out-Null
    }
    Write-Step "Installing PyTorch ($($choice.build)) from $($choice.index_url) (a large download the first time)"
    Invoke-Native $VenvPython @('-m', 'pip', 'install', '--upgrade', $choice.torch_requirement,
        '--index-url', $choice.index_url) | Out-Null

    if ($choice.triton_requirement) {
        Write-Step "Installing $($choice.triton_requirement)"
        $code = Invoke-Native $VenvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', $choice.triton_requirement) -AllowFailure
        if ($code -ne 0) {
            Write-Warn 'triton-windows did not install: gptoss will run on its slower torch path. gptoss doctor says more.'
        }
    }

    Write-Step 'Installing the rest of what gptoss needs'
    Invoke-Native $VenvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', '--upgrade-strategy', 'only-if-needed', $src) | Out-Null

    Write-Step "Putting gptoss on your PATH ($Bin)"
    # A copy of pip's gptoss.exe launcher: it names the venv's python.exe by absolute path, so it runs from
    # anywhere, passes Ctrl-C and exit codes straight through, and a re-run refreshes it.
    New-Item -ItemType Directory -Force -Path $Bin | Out-Null
    try { Copy-Item -Force (Join-Path $Venv 'Scripts\gptoss.exe') (Join-Path $Bin 'gptoss.exe') } catch {
        throw "Could not update $Bin\gptoss.exe ($($_.Exception.Message)). Close every running gptoss and try again."
    }
    Add-ToUserPath $Bin

    Write-Step 'Checking the installation (gptoss doctor)'
    $script:DoctorExitCode = Invoke-Native (Join-Path $Bin 'gptoss.exe') @('doctor') -AllowFailure
    Write-Host ''
    Write-Host 'gptoss is installed. Open a new terminal so the PATH change applies everywhere.'
}

if ($RemoveModels -and -not $Uninstall) { throw '-RemoveModels only goes with -Uninstall.' }
if ($Uninstall) {
    Uninstall-Gptoss
    exit 0
}
$script:DoctorExitCode = 1
Install-Gptoss
exit $script:DoctorExitCode
