// Client-matrix probe for Node's basic-ftp (npm): list, upload, download over FTPS.
//   node basic_ftp_client.js HOST PORT explicit|implicit CA.pem USER LOCAL REMOTE OUT [TLSv1.2]
// The password comes from FTP_PASSWORD. Prints "STEP name ok|fail detail" and "TLS ver cipher";
// exit 0 when all three steps worked. NODE_PATH must reach the installed basic-ftp.
"use strict";
const fs = require("fs");
const ftp = require("basic-ftp");

async function main() {
  const [host, port, mode, ca, user, local, remote, out, maxVersion] = process.argv.slice(2);
  const client = new ftp.Client(20000);
  const secureOptions = { ca: fs.readFileSync(ca) };
  if (maxVersion) secureOptions.maxVersion = maxVersion;
  let all = true;
  let tlsInfo = "";
  try {
    await client.access({
      host, port: Number(port), user, password: process.env.FTP_PASSWORD,
      secure: mode === "implicit" ? "implicit" : true, secureOptions,
    });
  } catch (err) {
    console.log(`STEP login fail ${String(err.message).replace(/\n/g, " ")}`);
    console.log("TLS ");
    process.exit(1);
  }
  const steps = [
    ["list", async () => (await client.list()).length + " entries"],
    ["upload", async () => (await client.uploadFrom(local, remote)).message],
    ["download", async () => (await client.downloadTo(out, remote)).message],
  ];
  for (const [name, run] of steps) {
    try {
      const detail = await run();
      console.log(`STEP ${name} ok ${String(detail).replace(/\n/g, " ")}`);
    } catch (err) {
      all = false;
      console.log(`STEP ${name} fail ${String(err.message).replace(/\n/g, " ")}`);
    }
  }
  const sock = client.ftp.socket;
  if (sock && sock.getProtocol) tlsInfo = `${sock.getProtocol()} ${(sock.getCipher() || {}).standardName || ""}`;
  console.log(`TLS ${tlsInfo}`);
  client.close();
  process.exit(all ? 0 : 1);
}

main();
