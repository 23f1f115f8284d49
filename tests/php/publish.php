<?php
// Publishes one update to a Mercure hub with Symfony's Mercure component, as
// a Symfony, API Platform or Laravel application does, and prints the id the
// hub answered. Debian's packages (php-symfony-mercure,
// php-symfony-http-client) bring the component and its autoloader.
//
//   php tests/php/publish.php HUB_URL JWT DATA TOPIC [TOPIC...] [--private] [--id=ID] [--type=TYPE]

declare(strict_types=1);

require '/usr/share/php/Symfony/Component/Mercure/autoload.php';

use Symfony\Component\Mercure\Hub;
use Symfony\Component\Mercure\Jwt\StaticTokenProvider;
use Symfony\Component\Mercure\Update;

[$script, $url, $jwt, $data] = array_slice($argv, 0, 4) + [null, null, null, null];
if ($data === null) {
    fwrite(STDERR, "usage: php publish.php HUB_URL JWT DATA TOPIC [TOPIC...] [--private] [--id=ID] [--type=TYPE]\n");
    exit(2);
}
$topics = [];
$private = false;
$id = null;
$type = null;
foreach (array_slice($argv, 4) as $arg) {
    if ($arg === '--private') {
        $private = true;
    } elseif (str_starts_with($arg, '--id=')) {
        $id = substr($arg, 5);
    } elseif (str_starts_with($arg, '--type=')) {
        $type = substr($arg, 7);
    } else {
        $topics[] = $arg;
    }
}

$hub = new Hub($url, new StaticTokenProvider($jwt));
echo $hub->publish(new Update($topics, $data, $private, $id, $type)), "\n";
